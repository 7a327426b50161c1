"""Mitosis annotations in the ICPR contest layouts.

- ICPR 2012 (MITOS): per image a CSV, one line per mitosis, holding the flat list of its
  pixel coordinates ``x1,y1,x2,y2,…`` (column, row). An empty file is an image without
  mitoses, which is valid.
- ICPR 2014 (MITOS-ATYPIA): per image a CSV of centroids ``x,y[,confidence]``.

``order="yx"`` reads files written the other way round.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import numpy as np

Order = Literal["xy", "yx"]


def _rows(path: Path) -> list[tuple[int, list[float]]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    rows = []
    with path.open(newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            values = [v.strip() for v in row if v.strip()]
            if not values:
                continue
            try:
                rows.append((number, [float(v) for v in values]))
            except ValueError as err:
                raise ValueError(f"{path}: line {number} is not a list of numbers ({err})") from err
    return rows


def read_icpr2012_labels(
    path: str | Path, shape: tuple[int, int], *, order: Order = "xy"
) -> np.ndarray:
    """A label image (0 = background, i = the i-th mitosis of the file) for an image of
    ``shape`` (height, width)."""
    path = Path(path)
    labels = np.zeros(shape[:2], np.uint16)
    for index, (number, values) in enumerate(_rows(path), start=1):
        if len(values) % 2:
            raise ValueError(
                f"{path}: line {number} has an odd number of coordinates ({len(values)})"
            )
        pairs = np.asarray(values).reshape(-1, 2)
        if not np.all(pairs == np.round(pairs)):
            raise ValueError(f"{path}: line {number} has non-integer pixel coordinates")
        cols, rows = (pairs[:, 0], pairs[:, 1]) if order == "xy" else (pairs[:, 1], pairs[:, 0])
        rows, cols = rows.astype(int), cols.astype(int)
        outside = (rows < 0) | (rows >= shape[0]) | (cols < 0) | (cols >= shape[1])
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise ValueError(
                f"{path}: line {number} has pixel (x={cols[i]}, y={rows[i]}) outside the "
                f"{shape[1]} × {shape[0]} image"
            )
        labels[rows, cols] = index
    return labels


def write_icpr2012_csv(path: str | Path, labels: np.ndarray, *, overwrite: bool = False) -> Path:
    """Write a label image in the ICPR 2012 layout (one line per label, ``x,y`` pairs)."""
    from napari_mitosis.io.output_file import atomic_output

    lines = []
    for value in np.unique(labels[labels > 0]):
        rows, cols = np.nonzero(labels == value)
        lines.append(",".join(f"{c},{r}" for r, c in zip(rows, cols, strict=True)))
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text("\n".join(lines) + ("\n" if lines else ""))
    return Path(path)


def read_icpr2014_centroids(
    path: str | Path, *, shape: tuple[int, int] | None = None, order: Order = "xy"
) -> tuple[np.ndarray, np.ndarray]:
    """Centroids as (n, 2) ``(y, x)`` pixels and their confidences (1.0 when absent)."""
    path = Path(path)
    points, confidence = [], []
    for number, values in _rows(path):
        if len(values) not in (2, 3):
            raise ValueError(
                f"{path}: line {number} should be x,y[,confidence], got {len(values)} values"
            )
        first, second = values[0], values[1]
        y, x = (second, first) if order == "xy" else (first, second)
        if shape is not None and not (0 <= y < shape[0] and 0 <= x < shape[1]):
            raise ValueError(
                f"{path}: line {number} centroid (x={x}, y={y}) is outside the {shape[1]} × {shape[0]} image"
            )
        points.append((y, x))
        confidence.append(values[2] if len(values) == 3 else 1.0)
    return np.asarray(points, float).reshape(-1, 2), np.asarray(confidence, float)
