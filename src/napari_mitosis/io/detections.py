"""Boxes with scores in slide level-0 pixels: from masks, to CSV, to QuPath GeoJSON.

Components come from scikit-image (`label`, `regionprops_table`): one box per connected
component. CSV columns give both level-0 pixels and µm so spreadsheets need no lookup.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.measure import label, regionprops_table

from napari_mitosis.io.geojson import DETECTOR_KEY, REVIEW_CLASSES, Annotation
from napari_mitosis.io.output_file import atomic_output

CSV_COLUMNS = (
    "x",
    "y",
    "width",
    "height",
    "score",
    "class",
    "x_um",
    "y_um",
    "width_um",
    "height_um",
)


@dataclass
class Detections:
    """Axis-aligned boxes ``(x0, y0, x1, y1)`` in level-0 pixels, with scores and classes."""

    boxes: np.ndarray  # (n, 4) float, xyxy
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    classes: list[str] = field(default_factory=list)
    mpp: tuple[float, float] | None = None  # (y, x) µm per level-0 pixel
    #: Further numbers per box (a candidate classifier's ``p_atypical``, ``p_mitosis``):
    #: QuPath measurements in GeoJSON, extra columns in CSV.
    measurements: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, float).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.ones(n) if len(self.scores) == 0 and n else np.asarray(self.scores, float)
        self.classes = list(self.classes) or [REVIEW_CLASSES[""]] * n  # "Mitosis candidate"
        if len(self.scores) != n or len(self.classes) != n:
            raise ValueError(
                f"{n} boxes but {len(self.scores)} scores and {len(self.classes)} classes"
            )
        self.measurements = {k: np.asarray(v, float) for k, v in self.measurements.items()}
        wrong = [k for k, v in self.measurements.items() if v.shape != (n,)]
        if wrong:
            raise ValueError(f"measurements {wrong} do not hold one number per box ({n})")
        if n and np.any(self.boxes[:, 2:] < self.boxes[:, :2]):
            raise ValueError("boxes must be (x0, y0, x1, y1) with x1 ≥ x0 and y1 ≥ y0")

    def __len__(self) -> int:
        return len(self.boxes)

    def subset(self, keep: np.ndarray) -> Detections:
        """The detections where ``keep`` (a boolean mask) is true."""
        keep = np.asarray(keep, bool)
        classes = [c for c, k in zip(self.classes, keep, strict=True) if k]
        measured = {k: v[keep] for k, v in self.measurements.items()}
        return Detections(self.boxes[keep], self.scores[keep], classes, self.mpp, measured)

    @property
    def centres(self) -> np.ndarray:
        """(n, 2) box centres as ``(y, x)`` level-0 pixels."""
        return np.stack(
            [(self.boxes[:, 1] + self.boxes[:, 3]) / 2, (self.boxes[:, 0] + self.boxes[:, 2]) / 2],
            axis=1,
        )

    def to_annotations(self, detector: str | None = None) -> list[Annotation]:
        """Rectangles QuPath imports as detections with a ``score`` measurement (and each
        ``p_*`` column); ``detector`` names the model that proposed them, in each
        feature's ``detector`` property."""
        source = {DETECTOR_KEY: detector} if detector else {}
        out = []
        for i, ((x0, y0, x1, y1), score, name) in enumerate(
            zip(self.boxes, self.scores, self.classes, strict=True)
        ):
            corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
            measured = {"score": float(score)}
            measured.update({k: float(v[i]) for k, v in self.measurements.items()})
            out.append(Annotation(corners, "rectangle", name, measured, "detection", dict(source)))
        return out


def boxes_from_labels(labels: np.ndarray, *, min_area: int = 0) -> Detections:
    """One box per labelled region of at least ``min_area`` pixels (scores = 1)."""
    if labels.ndim != 2:
        raise ValueError(f"expected a 2-D label image, got shape {labels.shape}")
    if not labels.any():
        return Detections(np.zeros((0, 4)))
    table = regionprops_table(
        np.asarray(labels).astype(np.int64, copy=False), properties=("bbox", "area")
    )
    keep = table["area"] >= min_area
    # skimage bbox is (min_row, min_col, max_row, max_col), max exclusive.
    boxes = np.stack([table["bbox-1"], table["bbox-0"], table["bbox-3"], table["bbox-2"]], axis=1)
    return Detections(boxes[keep].astype(float))


def mask_to_boxes(mask: np.ndarray, *, min_area: int = 0, connectivity: int = 2) -> Detections:
    """Boxes of the connected components of a binary mask."""
    return boxes_from_labels(
        label(np.asarray(mask, bool), connectivity=connectivity), min_area=min_area
    )


def write_detections_csv(
    path: str | Path, detections: Detections, *, overwrite: bool = False
) -> Path:
    """CSV of x, y, width, height (level-0 px, top-left corner), score, class, the same in
    µm, then one column per measurement (``p_atypical`` …)."""
    my, mx = detections.mpp if detections.mpp else (float("nan"), float("nan"))
    extra = list(detections.measurements)
    with atomic_output(path, overwrite=overwrite) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*CSV_COLUMNS, *extra])
        for i, ((x0, y0, x1, y1), score, name) in enumerate(
            zip(detections.boxes, detections.scores, detections.classes, strict=True)
        ):
            w, h = x1 - x0, y1 - y0
            writer.writerow(
                [
                    f"{x0:g}",
                    f"{y0:g}",
                    f"{w:g}",
                    f"{h:g}",
                    f"{score:.6g}",
                    name,
                    f"{x0 * mx:.6g}",
                    f"{y0 * my:.6g}",
                    f"{w * mx:.6g}",
                    f"{h * my:.6g}",
                    *(f"{detections.measurements[k][i]:.6g}" for k in extra),
                ]
            )
    return Path(path)


def read_detections_csv(path: str | Path, *, mpp: tuple[float, float] | None = None) -> Detections:
    """Read a CSV written by `write_detections_csv` (pixel columns are authoritative);
    further ``p_…`` columns become measurements."""
    path = Path(path)
    boxes, scores, classes = [], [], []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = {"x", "y", "width", "height"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing columns {sorted(missing)}")
        extra = [k for k in reader.fieldnames or () if k.startswith("p_")]
        measured: dict[str, list[float]] = {k: [] for k in extra}
        for number, row in enumerate(reader, start=2):
            try:
                x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                score = float(row.get("score") or 1.0)
                for k in extra:
                    measured[k].append(float(row[k] or "nan"))
            except ValueError as err:
                raise ValueError(f"{path}: line {number}: {err}") from err
            if w <= 0 or h <= 0:
                raise ValueError(f"{path}: line {number}: zero or negative box size {w} × {h}")
            boxes.append((x, y, x + w, y + h))
            scores.append(score)
            classes.append(row.get("class") or "Mitosis")
    return Detections(np.asarray(boxes).reshape(-1, 4), np.asarray(scores), classes, mpp, measured)
