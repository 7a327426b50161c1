"""Detector training data from annotations on a whole slide (QuPath GeoJSON points or
boxes, or a reviewed GeoJSON), held out by region.

The slide is cut into square fields on a grid and a band of them is held out
(`engine.region_split`): training fields come only from the rest, so no training crop
overlaps a validation field.

- Training: every field holding a figure, and about as many tissue fields without one
  (negatives), each with its boxes and the rejected look-alikes inside it (hard negatives).
- Validation: every field of the validation region holding a figure, and as many tissue
  fields without one, with the figures' centres (the 8 µm rule scores them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.engine.region_split import field_has_tissue, region_split
from napari_mitosis.engine.tissue import slide_tissue_mask
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import read_geojson
from napari_mitosis.io.mitosis_datasets import REVIEWED_BOX_UM, reviewed_annotations

#: fields of the training set: (image, boxes xyxy, hard-negative centres (y, x))
TrainingField = tuple[np.ndarray, np.ndarray, np.ndarray]
ValidationField = tuple[np.ndarray, np.ndarray]


@dataclass
class SlideFields:
    """Training and validation fields of one or more slides, and how they were split."""

    train: list[TrainingField]
    validation: list[ValidationField]
    mpp: float | None
    positives: int
    held_out_positives: int
    description: str


def slide_mitoses(
    path: str | Path, shape: tuple[int, int], mpp: float | None, box_um: float = REVIEWED_BOX_UM
) -> tuple[np.ndarray, np.ndarray]:
    """(boxes xyxy, hard-negative centres (y, x)) in level-0 px from a GeoJSON on a slide.

    A reviewed GeoJSON gives accepted figures and rejected look-alikes; any other gives
    every unclassified or ``Mitosis…`` feature: points become ``box_um`` boxes, shapes
    their bounding boxes."""
    reviewed = reviewed_annotations(path, shape, (mpp, mpp) if mpp else None)
    if reviewed is not None:
        return reviewed
    half = box_um / (mpp or 0.25) / 2
    boxes = []
    for annotation in read_geojson(path):
        name = annotation.classification
        if name is not None and not name.lower().startswith("mitos"):
            continue  # regions and other classes
        yx = annotation.coords.reshape(-1, 2)
        if annotation.shape_type == "point":
            y, x = yx[0]
            boxes.append((x - half, y - half, x + half, y + half))
        else:
            (y0, x0), (y1, x1) = yx.min(axis=0), yx.max(axis=0)
            boxes.append((x0, y0, x1, y1))
    if not boxes:
        raise ValueError(f"{path}: no mitosis points or boxes (unclassified or 'Mitosis…')")
    return np.asarray(boxes, float), np.zeros((0, 2))


def _inside(boxes: np.ndarray, y: int, x: int, size: int) -> np.ndarray:
    """Boxes whose centre lies in the field at (y, x), in field coordinates."""
    centres = np.c_[(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2]
    keep = (centres[:, 0] >= y) & (centres[:, 0] < y + size)
    keep &= (centres[:, 1] >= x) & (centres[:, 1] < x + size)
    return boxes[keep] - [x, y, x, y]


def slide_fields(
    slide_path: str | Path,
    annotations: str | Path,
    *,
    field: int = 512,
    val_fraction: float = 0.2,
    box_um: float = REVIEWED_BOX_UM,
    seed: int = 0,
    mpp: float | None = None,
) -> SlideFields:
    """Fields of ``field`` level-0 px from a slide and its annotations, split by region."""
    rng = np.random.default_rng(seed)
    with open_slide(slide_path, mpp=mpp) as slide:
        height, width = slide.levels[0].shape[:2]
        size = slide.mpp[1] if slide.mpp else None
        boxes, negatives = slide_mitoses(annotations, (height, width), size, box_um)
        if len(boxes) < 2:
            raise ValueError(f"{annotations}: need at least 2 mitoses (train + validation)")
        centres = np.c_[(boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2]
        split = region_split(centres, (height, width), field, val_fraction, annotations)
        held = split.held_out(*split.cells(centres).T)
        tissue = slide_tissue_mask(slide)
        field = split.field

        def read(r: int, c: int) -> np.ndarray:
            return np.asarray(slide.read_region(0, r * field, c * field, field, field))[..., :3]

        train: list[TrainingField] = []
        validation: list[ValidationField] = []
        for validating in (False, True):
            with_figures, empty = [], []
            for r, c in np.ndindex(split.rows, split.cols):
                if split.held_out(r, c) != validating:
                    continue
                found = _inside(boxes, r * field, c * field, field)
                (with_figures if len(found) else empty).append((r, c, found))
            empty = [e for e in empty if field_has_tissue(tissue, e[0], e[1], field)]
            picked = rng.permutation(len(empty))[: max(len(with_figures), 1)]
            for r, c, found in with_figures + [empty[i] for i in picked]:
                image = read(r, c)
                if validating:
                    centres = np.c_[
                        (found[:, 1] + found[:, 3]) / 2, (found[:, 0] + found[:, 2]) / 2
                    ]
                    validation.append((image, centres.reshape(-1, 2)))
                else:
                    near = negatives - [r * field, c * field]
                    near = near[((near >= 0) & (near < field)).all(axis=1)]
                    train.append((image, found, near))
    description = split.describe(int(held.sum()), len(boxes))
    return SlideFields(train, validation, size, len(boxes), int(held.sum()), description)


def describe(fields: SlideFields) -> dict[str, Any]:
    """What a model card's provenance records about the annotations."""
    return {
        "annotations": fields.positives,
        "held_out": fields.held_out_positives,
        "split": fields.description,
    }
