"""U-Net training pairs from annotations on a whole slide: mitosis polygons in a QuPath
GeoJSON (unclassified or ``Mitosis…`` features, level-0 pixels) or a labels TIFF of the
slide's size (non-zero = mitosis), held out by region as the detector's slide training
is (`engine.region_split`).

Training and validation each get every field holding a figure and as many tissue fields
without one; a field's mask is the figures drawn into it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mitosis.engine.region_split import field_has_tissue, region_split
from napari_mitosis.engine.tissue import slide_tissue_mask
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import read_geojson

Pair = tuple[np.ndarray, np.ndarray]


@dataclass
class SlidePairs:
    train: list[Pair]
    validation: list[Pair]
    mpp: float | None
    figures: int
    description: str


def _polygons(path: Path) -> list[np.ndarray]:
    """(n, 2) (y, x) outlines of the mitosis features; points are refused (a mask needs
    an outline: `pseudo-masks` grows centroids into figures)."""
    outlines = []
    for number, annotation in enumerate(read_geojson(path), start=1):
        name = annotation.classification
        if name is not None and not name.lower().startswith("mitos"):
            continue
        if annotation.shape_type == "point":
            raise ValueError(
                f"{path}: feature {number} is a point; the U-Net trains on outlines "
                "(grow centroids into masks with `napari-mitosis pseudo-masks`)"
            )
        outlines.append(annotation.coords.reshape(-1, 2))
    if len(outlines) < 2:
        raise ValueError(f"{path}: need at least 2 mitosis outlines (train + validation)")
    return outlines


def _labels_reader(path: Path, shape: tuple[int, int]):
    labels = open_slide(path)
    if labels.levels[0].shape[:2] != shape:
        raise ValueError(
            f"{path}: labels of {labels.levels[0].shape[:2]} px for a slide of {shape} px"
        )
    level = labels.levels[0]
    return (
        labels,
        lambda y, x, n: np.asarray(level[y : y + n, x : x + n]).reshape(n, n, -1)[..., 0] > 0,
    )


def slide_pairs(
    slide_path: str | Path,
    annotations: str | Path,
    *,
    field: int = 512,
    val_fraction: float = 0.2,
    seed: int = 0,
    mpp: float | None = None,
) -> SlidePairs:
    """(image, mask) fields of ``field`` level-0 px, split by region."""
    from skimage.draw import polygon as fill
    from skimage.measure import label, regionprops

    annotations = Path(annotations)
    rng = np.random.default_rng(seed)
    with open_slide(slide_path, mpp=mpp) as slide:
        shape = tuple(slide.levels[0].shape[:2])
        labels = None
        if annotations.suffix.lower() == ".geojson":
            outlines = _polygons(annotations)
            centres = np.asarray([o.mean(axis=0) for o in outlines])

            def mask_of(y: int, x: int, n: int) -> np.ndarray:
                mask = np.zeros((n, n), bool)
                for outline in outlines:
                    rr, cc = fill(outline[:, 0] - y, outline[:, 1] - x, (n, n))
                    mask[rr, cc] = True
                return mask
        else:
            labels, mask_of = _labels_reader(annotations, shape)
            coarse = labels.levels[-1]
            scale = np.asarray(shape) / np.asarray(coarse.shape[:2])
            found = label(np.asarray(coarse).reshape(*coarse.shape[:2], -1)[..., 0] > 0)
            centres = np.asarray([r.centroid for r in regionprops(found)]).reshape(-1, 2) * scale
            if len(centres) < 2:
                raise ValueError(f"{annotations}: need at least 2 labelled figures")
        split = region_split(centres, shape, field, val_fraction, annotations)
        cells = split.cells(centres)
        held = split.held_out(*cells.T)
        tissue = slide_tissue_mask(slide)
        n = split.field
        occupied = {tuple(c) for c in cells}
        pairs: dict[bool, list[Pair]] = {False: [], True: []}
        for validating in (False, True):
            chosen = [
                (r, c)
                for r, c in np.ndindex(split.rows, split.cols)
                if split.held_out(r, c) == validating and (r, c) in occupied
            ]
            empty = [
                (r, c)
                for r, c in np.ndindex(split.rows, split.cols)
                if split.held_out(r, c) == validating
                and (r, c) not in occupied
                and field_has_tissue(tissue, r, c, n)
            ]
            chosen += [empty[i] for i in rng.permutation(len(empty))[: max(len(chosen), 1)]]
            for r, c in chosen:
                image = np.asarray(slide.read_region(0, r * n, c * n, n, n))[..., :3]
                pairs[validating].append((image, mask_of(r * n, c * n, n)))
        if labels is not None:
            labels.close()
        size = slide.mpp[1] if slide.mpp else None
    return SlidePairs(
        pairs[False], pairs[True], size, len(centres), split.describe(int(held.sum()), len(centres))
    )
