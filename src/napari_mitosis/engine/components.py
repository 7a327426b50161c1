"""Connected components of a thresholded map, band by band, in bounded memory.

Each band of rows is labelled with scipy (8-connectivity); components touching across a
band edge are merged with a union-find over the two edge rows; a second pass renumbers
the labels 1..n. Only one band, two edge rows and per-label statistics are in memory, so a
whole-slide probability map (a zarr array) can be labelled as easily as a field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), bool)


@dataclass
class Components:
    """Labels (written into the given array) and each component's box, area and peak."""

    labels: Any  # (h, w) uint32 array-like: 0 background, 1..n components
    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1 (exclusive) in the map's pixels
    areas: np.ndarray  # (n,) pixels
    peaks: np.ndarray  # (n,) highest value of the map inside the component


def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        x = int(parent[x])
    return x


def _roots(parent: np.ndarray) -> np.ndarray:
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def label_components(
    values: Any, threshold: float, *, out: Any = None, band: int = 1024
) -> Components:
    """Label ``values >= threshold`` (8-connected) into ``out`` (default: a new NumPy array)."""
    height, width = values.shape[:2]
    out = np.zeros((height, width), np.uint32) if out is None else out
    parent = np.zeros(1, np.int64)  # parent[label]; label 0 is background
    lo = np.zeros((0, 2), np.int64)  # per provisional label: min (y, x)
    hi = np.zeros((0, 2), np.int64)  # max (y, x), inclusive
    areas = np.zeros(0, np.int64)
    peaks = np.zeros(0, np.float64)
    previous_edge: np.ndarray | None = None
    for top in range(0, height, band):
        block = np.asarray(values[top : top + band])
        labels, n = ndimage.label(block >= threshold, structure=EIGHT_CONNECTED)
        offset = len(parent) - 1
        labels = np.where(labels > 0, labels + offset, 0).astype(np.uint32)
        parent = np.concatenate([parent, np.arange(offset + 1, offset + n + 1)])
        index = np.arange(offset + 1, offset + n + 1)
        slices = ndimage.find_objects(labels, max_label=offset + n)[offset:]
        starts = np.array([(sl[0].start + top, sl[1].start) for sl in slices], np.int64).reshape(
            -1, 2
        )
        stops = np.array(
            [(sl[0].stop - 1 + top, sl[1].stop - 1) for sl in slices], np.int64
        ).reshape(-1, 2)
        lo = np.concatenate([lo, starts])
        hi = np.concatenate([hi, stops])
        areas = np.concatenate(
            [areas, ndimage.sum_labels(np.ones_like(labels), labels, index)]
        ).astype(np.int64)
        peaks = np.concatenate([peaks, ndimage.maximum(block, labels, index) if n else []])
        if previous_edge is not None and n:
            first = labels[0]
            for shift in (-1, 0, 1):  # 8-connectivity across the edge
                a = previous_edge[max(shift, 0) : width + min(shift, 0)]
                b = first[max(-shift, 0) : width + min(-shift, 0)]
                both = (a > 0) & (b > 0)
                for u, v in np.unique(np.stack([a[both], b[both]], axis=1), axis=0):
                    ru, rv = _find(parent, int(u)), _find(parent, int(v))
                    if ru != rv:
                        parent[max(ru, rv)] = min(ru, rv)
        out[top : top + band] = labels
        previous_edge = labels[-1].copy()

    roots = _roots(parent)
    unique_roots = np.unique(roots[1:]) if len(roots) > 1 else np.zeros(0, np.int64)
    lookup = np.zeros(len(parent), np.uint32)
    final = np.searchsorted(unique_roots, roots[1:]) + 1
    lookup[1:] = final
    n_final = len(unique_roots)
    box_lo = np.full((n_final, 2), np.iinfo(np.int64).max)
    box_hi = np.full((n_final, 2), -1)
    total = np.zeros(n_final, np.int64)
    peak = np.full(n_final, -np.inf)
    if len(final):
        np.minimum.at(box_lo, final - 1, lo)
        np.maximum.at(box_hi, final - 1, hi)
        np.add.at(total, final - 1, areas)
        np.maximum.at(peak, final - 1, peaks)
        for top in range(0, height, band):  # second pass: provisional → final labels
            out[top : top + band] = lookup[np.asarray(out[top : top + band])]
    boxes = np.column_stack(
        [box_lo[:, 1], box_lo[:, 0], box_hi[:, 1] + 1, box_hi[:, 0] + 1]
    ).astype(float)
    return Components(out, boxes.reshape(-1, 4), total, peak)
