"""Where classifier examples come from, and how they are split.

- Class folders: ``root/<class>/*.png`` (ultrasound frames, IDC patches, mitosis crops).
  A ``labels.csv`` in ``root`` with ``file`` and ``slide`` (or ``patient``) columns says
  which images share a source, so splits never put one slide on both sides.
- Slides with tumour annotations (binary mask images, QuPath GeoJSON polygons, Camelyon16
  ASAP XML): patches labelled by the centre-window rule — tumour when the central window
  (the classification cell) holds tumour — and balanced between classes.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from skimage.draw import polygon as fill_polygon
from sklearn.model_selection import StratifiedGroupKFold

from napari_mitosis.classification.patches import (
    PatchReader,
    centre_crop_of,
    context_level,
    resize_rgb,
)
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.engine.tissue import TissueMask, slide_tissue_mask
from napari_mitosis.io.asap_xml import read_asap_xml
from napari_mitosis.io.formats import PLAIN_IMAGE_SUFFIXES, open_slide
from napari_mitosis.io.geojson import Annotation, read_geojson
from napari_mitosis.io.slide import Slide

#: Camelyon16 ASAP groups: tumour, and "_2" = non-tumour drawn inside a tumour outline.
TUMOUR_GROUPS = ("tumor", "tumour", "_0", "_1", "metastasis")
EXCLUSION_GROUPS = ("_2", "exclusion", "normal", "non-tumor", "non-tumour")


@dataclass
class ImageFolder:
    """Images of a class-folder data set, with labels and source groups."""

    paths: list[Path]
    labels: np.ndarray  # index into ``classes``
    classes: tuple[str, ...]
    groups: np.ndarray  # slide/patient of each image (the image itself when unknown)

    def load(
        self, size: int | None = None, indices: Any = None, centre_crop: int | None = None
    ) -> np.ndarray:
        """Images (all, or ``indices``) as uint8 (N, size, size, 3): the central
        ``centre_crop`` px when given, resized to ``size`` (default: unchanged)."""
        images = []
        chosen = self.paths if indices is None else [self.paths[i] for i in indices]
        for path in chosen:
            try:
                with Image.open(path) as handle:
                    rgb = np.asarray(handle.convert("RGB"))
            except OSError as err:
                raise ValueError(f"{path}: not a readable image ({err})") from err
            rgb = centre_crop_of(rgb, centre_crop)
            size = size or rgb.shape[0]
            images.append(resize_rgb(rgb, size))
        return np.stack(images)


def class_folders(root: str | Path, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """``root/<class>/`` images; class order = ``classes`` or sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = tuple(classes or found)
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing or len(classes) < 2:
        lacking = f", but not {missing}" if missing else ""
        raise ValueError(
            f"{root}: needs one sub-folder per class (at least two); found {found or 'none'}"
            f"{lacking}"
        )
    paths, labels = [], []
    for index, name in enumerate(classes):
        members = sorted(
            p for p in (root / name).iterdir() if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES
        )
        if not members:
            raise ValueError(f"{root / name}: holds no images")
        paths += members
        labels += [index] * len(members)
    groups = _groups(root, paths)
    return ImageFolder(paths, np.asarray(labels), classes, groups)


def _groups(root: Path, paths: list[Path]) -> np.ndarray:
    table = root / "labels.csv"
    own = np.asarray([str(p.relative_to(root)) for p in paths])
    if not table.is_file():
        return own
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = next((c for c in ("slide", "patient", "case") if rows and c in rows[0]), None)
    if column is None or "file" not in rows[0]:
        return own
    source = {r["file"]: r[column] for r in rows}
    return np.asarray([source.get(name, name) for name in own])


def split_by_group(
    labels: np.ndarray, groups: np.ndarray, *, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) indices: about ``fraction`` held out, whole groups only, class
    balance kept as far as groups allow (scikit-learn's StratifiedGroupKFold)."""
    if len(np.unique(groups)) < 2:
        raise ValueError("need at least two slides/patients to split by")
    folds = max(2, round(1 / fraction))
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    rest, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return rest, held


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


ANNOTATION_SUFFIXES = (".xml", ".geojson", "_mask.png", ".mask.png", "_mask.tif", ".mask.tif")


def annotation_for(slide_path: Path, folder: Path) -> Path:
    """The tumour annotation of a slide: ``<stem>.xml`` (ASAP), ``.geojson`` or a mask image."""
    for suffix in ANNOTATION_SUFFIXES:
        candidate = Path(folder) / f"{Path(slide_path).stem}{suffix}"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{slide_path}: no tumour annotation ({', '.join(ANNOTATION_SUFFIXES)}) in {folder}"
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
    """Balanced patches of ``slide``: (N, patch, patch, C) uint8 and 0/1 labels.

    The slide is cut into ``window``-px cells at ``level`` (the cells inference scores);
    a cell is tumour when any of it is, normal when none is and it holds ``min_tissue``
    tissue; each patch is centred on its cell (``PatchReader``, as at inference).
    """
    source = slide.sources[level]
    grid = TileGrid.over(
        source.shape,
        window,
        0,
        level=level,
        downsample=slide.level_downsample(level)[1],
        uniform=True,
    )
    tumour_fraction = tumour.tile_fractions(grid)
    tissue_fraction = slide_tissue_mask(slide).tile_fractions(grid)
    origins = grid.origins()
    positive = np.flatnonzero(tumour_fraction > 0)
    negative = np.flatnonzero((tumour_fraction == 0) & (tissue_fraction >= min_tissue))
    n = min(per_class, len(positive), len(negative))
    if n == 0:
        raise ValueError(
            f"{slide.path}: no {'tumour' if not len(positive) else 'normal tissue'} cells "
            f"at level {level} to sample"
        )
    chosen = np.concatenate([rng.choice(positive, n, False), rng.choice(negative, n, False)])
    context_source, scale = context_level(slide, level, context)
    read = PatchReader(
        source,
        patch=patch,
        cell=window,
        context=context,
        context_source=context_source,
        context_scale=scale,
    )
    patches = np.stack([read(int(origins[i, 0]), int(origins[i, 1])) for i in chosen])
    return patches, np.r_[np.ones(n, int), np.zeros(n, int)]


def patch_level(slide: Slide, mpp: float | None, level: int | None) -> int:
    """``level`` if given, else the level closest to ``mpp``."""
    return slide.level_for_mpp(mpp) if level is None else level


def describe(folder: ImageFolder) -> dict[str, Any]:
    counts = {c: int((folder.labels == i).sum()) for i, c in enumerate(folder.classes)}
    return {"images": len(folder.paths), "groups": len(np.unique(folder.groups)), **counts}
