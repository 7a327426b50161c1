"""Where classifier examples come from, and how they are split.

- Class folders (`io.class_folders`): ``root/<class>/*.png`` (ultrasound frames, IDC patches,
  mitosis crops).
  A ``labels.csv`` in ``root`` with ``file`` and ``slide`` (or ``patient``) columns says
  which images share a source, so splits never put one slide on both sides.
- Slides with tumour annotations (binary mask images, QuPath GeoJSON polygons, Camelyon16
  ASAP XML): patches labelled by the centre-window rule — tumour when the central window
  (the classification cell) holds tumour — and balanced between classes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from napari_mitosis.classification.slide_regions import cell_grid, read_patches
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.engine.tissue import TissueMask, slide_tissue_mask
from napari_mitosis.io.asap_xml import read_asap_xml
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import Annotation, read_geojson
from napari_mitosis.io.slide import Slide

#: Camelyon16 ASAP groups: tumour, and "_2" = non-tumour drawn inside a tumour outline.
TUMOUR_GROUPS = ("tumor", "tumour", "_0", "_1", "metastasis")
EXCLUSION_GROUPS = ("_2", "exclusion", "normal", "non-tumor", "non-tumour")


# --- slides with tumour annotations --------------------------------------------------


def rasterize(
    annotations: list[Annotation], shape: tuple[int, int], downsample: tuple[float, float]
) -> np.ndarray:
    """Tumour polygons minus exclusion polygons, as a bool mask of ``shape`` pixels of
    ``downsample`` level-0 pixels each. Unclassified polygons count as tumour."""
    mask = np.zeros(shape, bool)
    holes = np.zeros(shape, bool)
    for a in annotations:
        if a.shape_type == "point" or len(a.coords) < 3:
            continue
        name = (a.classification or "tumor").lower()
        target = holes if name in EXCLUSION_GROUPS else mask
        if name not in EXCLUSION_GROUPS and name not in TUMOUR_GROUPS and a.classification:
            continue  # other classes (e.g. "Stroma") are neither
        rr, cc = fill_polygon(a.coords[:, 0] / downsample[0], a.coords[:, 1] / downsample[1], shape)
        target[rr, cc] = True
    return mask & ~holes


ANNOTATION_SUFFIXES = (
    ".xml",
    ".geojson",
    "_mask.png",
    ".mask.png",
    "_mask.tif",
    ".mask.tif",
    ".labels.tif",
    "_labels.tif",
)


def annotation_for(slide_path: Path, folder: Path) -> Path:
    """The annotation of a slide: ``<stem>.xml`` (ASAP), ``.geojson``, or a mask or labels
    image."""
    for suffix in ANNOTATION_SUFFIXES:
        candidate = Path(folder) / f"{Path(slide_path).stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{slide_path}: no annotation named {Path(slide_path).stem}"
        f"{{{', '.join(ANNOTATION_SUFFIXES)}}} in {folder}"
    )


def tumour_mask(slide: Slide, annotation: str | Path, *, max_size: int = 4096) -> TissueMask:
    """The tumour region of ``slide`` from a mask image, GeoJSON or ASAP XML, as a mask
    on a grid of at most ``max_size`` px (with its downsample, like a tissue mask)."""
    annotation = Path(annotation)
    if not annotation.is_file():
        raise FileNotFoundError(f"{annotation}: no such annotation file")
    height, width = slide.levels[0].shape[:2]
    name = annotation.name.lower()
    if name.endswith((".xml", ".geojson", ".json")):
        factor = max(1.0, max(height, width) / max_size)
        shape = (max(1, round(height / factor)), max(1, round(width / factor)))
        downsample = (height / shape[0], width / shape[1])
        shapes = read_asap_xml(annotation) if name.endswith(".xml") else read_geojson(annotation)
        return TissueMask(rasterize(shapes, shape, downsample), downsample)
    with open_slide(annotation) as image:  # a mask image (any resolution, same extent)
        level = next(
            (i for i, lv in enumerate(image.levels) if max(lv.shape[:2]) <= max_size),
            len(image.levels) - 1,
        )
        pixels = np.asarray(image.levels[level])
    mask = pixels.max(axis=2) > 0 if pixels.ndim == 3 else pixels > 0
    ratio_h, ratio_w = height / mask.shape[0], width / mask.shape[1]
    if abs(np.log(ratio_h / ratio_w)) > 0.02:
        raise ValueError(
            f"{annotation}: its aspect ({mask.shape[1]} × {mask.shape[0]}) does not match "
            f"the slide's ({width} × {height})"
        )
    return TissueMask(mask, (ratio_h, ratio_w))


def tumour_cells(
    slide: Slide, tumour: TissueMask, *, level: int, window: int, min_tissue: float = 0.3
) -> tuple[TileGrid, np.ndarray]:
    """The ``window``-px cells of ``level`` (the cells inference scores) and their class:
    1 (tumour) when any of the cell is tumour, 0 (normal) when none is and it holds
    ``min_tissue`` tissue, −1 otherwise."""
    grid = cell_grid(slide, level, window)
    tumour_fraction = tumour.tile_fractions(grid)
    tissue_fraction = slide_tissue_mask(slide).tile_fractions(grid)
    labels = np.full(len(tumour_fraction), -1)
    labels[(tumour_fraction == 0) & (tissue_fraction >= min_tissue)] = 0
    labels[tumour_fraction > 0] = 1
    return grid, labels


def slide_patches(
    slide: Slide,
    tumour: TissueMask,
    *,
    level: int,
    patch: int,
    window: int,
    per_class: int,
    min_tissue: float = 0.3,
    context: float | None = None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced patches of ``slide``: (N, patch, patch, C) uint8 and 0/1 labels of its
    `tumour_cells`, each patch centred on its cell (as at inference)."""
    grid, labels = tumour_cells(slide, tumour, level=level, window=window, min_tissue=min_tissue)
    chosen = balanced_cells(labels, per_class, rng, slide.path)
    patches = read_patches(slide, grid, grid.origins()[chosen], patch, context)
    return patches, labels[chosen].astype(int)


def balanced_cells(
    labels: np.ndarray, per_class: int, rng: np.random.Generator, what: object
) -> np.ndarray:
    """As many tumour (1) as normal (0) cells, up to ``per_class`` each: tumour first."""
    positive, negative = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n = min(per_class, len(positive), len(negative))
    if n == 0:
        kind = "tumour" if not len(positive) else "normal tissue"
        raise ValueError(f"{what}: no {kind} cells to sample")
    return np.concatenate([rng.choice(positive, n, False), rng.choice(negative, n, False)])


def patch_level(slide: Slide, mpp: float | None, level: int | None) -> int:
    """``level`` if given, else the level closest to ``mpp``."""
    return slide.level_for_mpp(mpp) if level is None else level
