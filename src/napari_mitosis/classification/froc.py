"""Camelyon16 lesion-level scoring: FROC from heatmap candidates.

Each slide's candidates are the local peaks of its heatmap (here: the highest cell of each
connected region above a low threshold). Taken by decreasing probability over all slides,
a candidate inside a true lesion hits that lesion (once), one outside every lesion is a
false positive, and one inside an ignored lesion (isolated tumour cells: longest axis
< 275 µm) counts as neither. The FROC score is the mean sensitivity at 1/4, 1/2, 1, 2, 4
and 8 false positives per slide, as in the challenge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.measure import label, regionprops

from napari_mitosis.classification.run import HeatmapResult
from napari_mitosis.engine.tissue import TissueMask

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Lesions:
    """Labelled true lesions on a grid of ``downsample`` level-0 pixels per pixel."""

    labels: np.ndarray  # 0 = no lesion
    downsample: tuple[float, float]
    ignored: frozenset[int]  # labels of isolated tumour cells (neither hit nor miss)

    @property
    def counted(self) -> int:
        return len(set(np.unique(self.labels)) - {0} - self.ignored)

    def at(self, yx_level0: np.ndarray) -> np.ndarray:
        """Lesion label under each (y, x) level-0 point (0 outside every lesion)."""
        if not len(yx_level0):
            return np.zeros(0, int)
        rows = np.clip(
            (yx_level0[:, 0] / self.downsample[0]).astype(int), 0, self.labels.shape[0] - 1
        )
        cols = np.clip(
            (yx_level0[:, 1] / self.downsample[1]).astype(int), 0, self.labels.shape[1] - 1
        )
        return self.labels[rows, cols]


def lesions_from_mask(
    tumour: TissueMask,
    mpp: float | None,
    *,
    dilate_um: float = 75.0,
    itc_um: float = 275.0,
) -> Lesions:
    """Lesions as the challenge's evaluation builds them: the mask dilated by 75 µm, then
    connected components; components whose longest axis is under 275 µm are ignored."""
    pixel_um = (mpp or 1.0) * tumour.downsample[0]
    mask = tumour.mask
    if dilate_um > 0 and mask.any():
        mask = distance_transform_edt(~mask) * pixel_um <= dilate_um
    labels = label(mask)
    ignored = frozenset(
        r.label for r in regionprops(labels) if r.axis_major_length * pixel_um < itc_um
    )
    return Lesions(labels, tumour.downsample, ignored)


def heatmap_candidates(
    result: HeatmapResult, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """One candidate per connected region of cells ≥ ``threshold``: its highest cell's
    centre (level-0 (y, x)) and probability."""
    heat = np.asarray(result.heatmap, float) * result.visited
    regions = label(heat >= threshold)
    points, probs = [], []
    oy, ox = result.origin_level0
    for region in regionprops(regions, intensity_image=heat):
        coords = region.coords
        best = coords[np.argmax(heat[coords[:, 0], coords[:, 1]])]
        points.append(
            (oy + (best[0] + 0.5) * result.cell_level0, ox + (best[1] + 0.5) * result.cell_level0)
        )
        probs.append(heat[best[0], best[1]])
    return np.asarray(points, float).reshape(-1, 2), np.asarray(probs, float)


@dataclass(frozen=True)
class Froc:
    fps_per_slide: np.ndarray  # curve, increasing
    sensitivity: np.ndarray
    score: float  # mean sensitivity at FP_RATES
    at_rates: tuple[float, ...]


def froc(
    slides: Sequence[tuple[np.ndarray, np.ndarray, Lesions]], rates: Sequence[float] = FP_RATES
) -> Froc:
    """FROC over ``(candidate points (y, x) level-0, probabilities, lesions)`` per slide."""
    if not slides:
        raise ValueError("FROC needs at least one slide")
    total = sum(lesions.counted for _, _, lesions in slides)
    events = []  # (probability, slide, lesion label)
    for index, (points, probs, lesions) in enumerate(slides):
        for p, lab in zip(probs, lesions.at(np.asarray(points, float).reshape(-1, 2)), strict=True):
            if lab in lesions.ignored:
                continue
            events.append((float(p), index, int(lab)))
    events.sort(key=lambda e: -e[0])
    hit: set[tuple[int, int]] = set()
    fps, sens = [0.0], [0.0]
    tp = fp = 0
    for i, (p, index, lab) in enumerate(events):
        if lab == 0:
            fp += 1
        elif (index, lab) not in hit:
            hit.add((index, lab))
            tp += 1
        if i + 1 == len(events) or events[i + 1][0] != p:  # ties enter together
            fps.append(fp / len(slides))
            sens.append(tp / total if total else 0.0)
    fps_a, sens_a = np.asarray(fps), np.asarray(sens)
    at = tuple(float(sens_a[fps_a <= r].max()) for r in rates)
    return Froc(fps_a, sens_a, float(np.mean(at)), at)
