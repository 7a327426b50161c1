"""Scoring detections the way the mitosis challenges do (MITOS 2012/2014, TUPAC, MIDOG).

A detection is a hit when its centre lies within ``max_distance`` of a true mitosis that no
earlier detection has claimed; each truth is claimed once. Detections are taken in order of
decreasing score (ties: input order) and each claims its nearest unclaimed truth in range
(ties: the lower truth index). The distance is fixed in µm (8 µm by default) and converted
with the image's µm/pixel once, here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

DEFAULT_DISTANCE_UM = 8.0


@dataclass(frozen=True)
class MatchResult:
    """Counts and rates of one matching; ``hits[i]`` says whether detection i is a TP."""

    tp: int
    fp: int
    fn: int
    hits: np.ndarray  # bool per detection (input order)
    pairs: np.ndarray  # (tp, 2) detection index, truth index

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); 1.0 when there is nothing to find and nothing found."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0


def max_distance_px(mpp: float | None, distance_um: float = DEFAULT_DISTANCE_UM) -> float:
    """The hit radius in pixels; pixel-unit images take ``distance_um`` as pixels."""
    return distance_um / mpp if mpp else distance_um


def match_detections(
    detections: np.ndarray,
    truths: np.ndarray,
    *,
    max_distance: float,
    scores: np.ndarray | None = None,
) -> MatchResult:
    """Match (n, 2) detection centres to (m, 2) true centres (same units and axis order)."""
    detections = np.asarray(detections, float).reshape(-1, 2)
    truths = np.asarray(truths, float).reshape(-1, 2)
    scores = np.zeros(len(detections)) if scores is None else np.asarray(scores, float)
    if len(scores) != len(detections):
        raise ValueError(f"{len(detections)} detections but {len(scores)} scores")
    hits = np.zeros(len(detections), bool)
    pairs: list[tuple[int, int]] = []
    if len(detections) and len(truths):
        tree = cKDTree(truths)
        claimed = np.zeros(len(truths), bool)
        for d in np.argsort(-scores, kind="stable"):
            candidates = tree.query_ball_point(detections[d], r=max_distance)
            free = [t for t in candidates if not claimed[t]]
            if not free:
                continue
            distances = np.hypot(*(truths[free] - detections[d]).T)
            best = min(zip(distances, free, strict=True))[1]  # nearest; ties → lower index
            claimed[best] = True
            hits[d] = True
            pairs.append((int(d), int(best)))
    tp = int(hits.sum())
    return MatchResult(
        tp, len(detections) - tp, len(truths) - tp, hits, np.array(pairs, int).reshape(-1, 2)
    )


def _sweep(
    detections: np.ndarray,
    scores: np.ndarray,
    truths: np.ndarray,
    max_distance: float,
    fp_weights: np.ndarray | None = None,
):
    """TP/FP at every distinct score, from one greedy matching; a false positive counts
    ``fp_weights`` of one (default 1).

    Greedy matching takes detections by decreasing score, so the matching of the detections
    scoring ≥ t is the first steps of the full matching: one pass gives every threshold.
    """
    scores = np.asarray(scores, float)
    full = match_detections(detections, truths, max_distance=max_distance, scores=scores)
    order = np.argsort(-scores, kind="stable")
    tp = np.cumsum(full.hits[order])
    weights = np.ones(len(scores)) if fp_weights is None else np.asarray(fp_weights, float)
    fp = np.cumsum(np.where(full.hits, 0.0, weights)[order])
    ordered = scores[order]
    last_of_each = np.flatnonzero(np.r_[ordered[1:] != ordered[:-1], True])  # ties go in together
    return ordered[last_of_each], tp[last_of_each], fp[last_of_each], len(truths)


def f1_optimal_threshold(
    detections: np.ndarray,
    scores: np.ndarray,
    truths: np.ndarray,
    *,
    max_distance: float,
    fp_weights: np.ndarray | None = None,
) -> tuple[float, MatchResult, float]:
    """The score threshold (keep scores ≥ it) with the best F1, its matching and that F1.

    ``fp_weights`` makes a false positive count more than one: a detection on a sample of
    negative tissue standing for a larger area (`weighted_false_positives`). The highest
    threshold wins ties (fewer detections, same F1). With no detection at all, the
    threshold is +inf.
    """
    scores = np.asarray(scores, float)
    detections = np.asarray(detections, float).reshape(-1, 2)
    if not len(scores):
        none = match_detections(detections, truths, max_distance=max_distance)
        return np.inf, none, none.f1
    thresholds, tp, fp, n_truths = _sweep(detections, scores, truths, max_distance, fp_weights)
    f1 = 2 * tp / np.maximum(2 * tp + fp + (n_truths - tp), 1)
    if n_truths == 0:  # nothing to find: the best is to keep nothing
        none = match_detections(detections[:0], truths, max_distance=max_distance)
        return np.inf, none, none.f1
    best = int(np.argmax(f1))  # first maximum = highest threshold
    keep = scores >= thresholds[best]
    # Keeping nothing scores F1 0 (with truths); every threshold above beats it or ties.
    match = match_detections(
        detections[keep], truths, max_distance=max_distance, scores=scores[keep]
    )
    return float(thresholds[best]), match, float(f1[best])


def threshold_with_margin(scores: np.ndarray, threshold: float) -> float:
    """Halfway between ``threshold`` and the highest score below it (or 0).

    Keeping scores ≥ the result keeps exactly what ``threshold`` keeps on these scores, so
    the validation F1 is unchanged; but a figure on new data that scores a little below
    the weakest validation hit is no longer lost, which an F1-optimal threshold (the score
    of that weakest hit itself) invites. Non-finite thresholds are returned as they are.
    """
    if not np.isfinite(threshold):
        return threshold
    below = np.asarray(scores, float)
    below = below[below < threshold]
    return float((threshold + (below.max() if len(below) else 0.0)) / 2)


def precision_recall_curve(
    detections: np.ndarray, scores: np.ndarray, truths: np.ndarray, *, max_distance: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, precision, recall) at every distinct score, highest threshold first."""
    detections = np.asarray(detections, float).reshape(-1, 2)
    if not len(scores):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    thresholds, tp, fp, n_truths = _sweep(
        detections, np.asarray(scores, float), truths, max_distance
    )
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / n_truths if n_truths else np.ones(len(tp))
    return thresholds, precision, recall


def pool_fields(
    fields: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, float | None]],
    distance_um: float = DEFAULT_DISTANCE_UM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Many images as one matching problem: ``(centres, scores, truths, mpp)`` per image →
    pooled ``(centres, scores, truths, max_distance)``.

    Coordinates go to µm (pixel units when an image has no µm/pixel) and each image is
    placed to the right of the previous one with a gap wider than the hit radius, so no
    detection can claim a truth of another image; the challenges score a test set this way
    (one F1 over all fields, not a mean of per-field F1s).
    """
    centres, scores, truths = [], [], []
    offset = 0.0
    for found, score, truth, mpp in fields:
        scale = mpp or 1.0
        found = np.asarray(found, float).reshape(-1, 2) * scale
        truth = np.asarray(truth, float).reshape(-1, 2) * scale
        shift = np.array([0.0, offset])
        centres.append(found + shift)
        truths.append(truth + shift)
        scores.append(np.asarray(score, float).reshape(-1))
        extent = max([0.0, *found[:, 1], *truth[:, 1]])
        offset += extent + 10 * distance_um + 1.0
    return (
        np.concatenate(centres) if centres else np.zeros((0, 2)),
        np.concatenate(scores) if scores else np.zeros(0),
        np.concatenate(truths) if truths else np.zeros((0, 2)),
        distance_um,  # the radius in the pooled units (µm, or pixels for pixel-unit images)
    )
