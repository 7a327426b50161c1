"""Given detections and true mitoses, scoring follows the challenges' centroid rule,
checked against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mitosis.detection.matching import (
    f1_optimal_threshold,
    match_detections,
    max_distance_px,
    precision_recall_curve,
    threshold_with_margin,
)


def test_8_um_becomes_pixels_with_the_image_resolution() -> None:
    assert max_distance_px(0.25) == 32.0
    assert max_distance_px(0.5, 5.0) == 10.0
    assert max_distance_px(None) == 8.0  # pixel-unit images: the number is taken as pixels


def test_hits_misses_and_false_alarms() -> None:
    truths = np.array([[0, 0], [100, 100], [200, 200]], float)
    detections = np.array([[3, 4], [100, 109], [50, 50]], float)  # 5 px, 9 px, far
    result = match_detections(detections, truths, max_distance=8)
    # 5 px is inside 8 px; 9 px is outside; (50, 50) matches nothing.
    assert (result.tp, result.fp, result.fn) == (1, 2, 2)
    assert list(result.hits) == [True, False, False]
    assert result.precision == pytest.approx(1 / 3) and result.recall == pytest.approx(1 / 3)
    assert result.f1 == pytest.approx(2 * 1 / (2 * 1 + 2 + 2))


def test_exactly_on_the_radius_counts() -> None:
    result = match_detections(np.array([[0.0, 8.0]]), np.array([[0.0, 0.0]]), max_distance=8)
    assert result.tp == 1


def test_one_truth_is_claimed_once_by_the_higher_score() -> None:
    truths = np.array([[0, 0]], float)
    detections = np.array([[0, 2], [0, 1]], float)  # the second is nearer but scores lower
    result = match_detections(detections, truths, max_distance=8, scores=np.array([0.9, 0.5]))
    assert list(result.hits) == [True, False]  # duplicates of one mitosis: one TP, one FP
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)


def test_one_detection_near_two_truths_claims_the_nearest() -> None:
    truths = np.array([[0, 0], [0, 10]], float)
    detections = np.array([[0, 6], [0, -1]], float)
    result = match_detections(detections, truths, max_distance=8, scores=np.array([0.9, 0.8]))
    # The 0.9 detection is 6 px from truth 0 and 4 px from truth 1: it takes truth 1,
    # leaving truth 0 for the second detection.
    assert result.pairs.tolist() == [[0, 1], [1, 0]]
    assert (result.tp, result.fp, result.fn) == (2, 0, 0)


def test_ties_take_the_lower_truth_index_and_the_earlier_detection() -> None:
    truths = np.array([[0, -5], [0, 5]], float)
    result = match_detections(np.array([[0.0, 0.0]]), truths, max_distance=8)
    assert result.pairs.tolist() == [[0, 0]]
    equal_scores = match_detections(
        np.array([[0.0, -1.0], [0.0, -1.0]]), truths[:1], max_distance=8
    )
    assert list(equal_scores.hits) == [True, False]


def test_empty_cases_are_valid() -> None:
    none = np.zeros((0, 2))
    assert match_detections(none, none, max_distance=8).f1 == 1.0  # a field without mitoses
    missed = match_detections(none, np.array([[1.0, 1.0]]), max_distance=8)
    assert (missed.tp, missed.fn, missed.f1) == (0, 1, 0.0)
    alarm = match_detections(np.array([[1.0, 1.0]]), none, max_distance=8)
    assert (alarm.fp, alarm.precision, alarm.f1) == (1, 0.0, 0.0)


def test_f1_optimal_threshold_and_precision_recall_curve() -> None:
    truths = np.array([[0, 0], [100, 0]], float)
    detections = np.array([[0, 1], [100, 1], [300, 300], [500, 500]], float)
    scores = np.array([0.9, 0.6, 0.7, 0.2])
    threshold, result, _ = f1_optimal_threshold(detections, scores, truths, max_distance=8)
    # ≥0.9: F1 = 2/3; ≥0.7: 0.5; ≥0.6: 0.8 (2 TP, 1 FP); ≥0.2: 2/3.
    assert threshold == 0.6 and result.f1 == pytest.approx(0.8)
    # The card keeps a margin: halfway to the next lower score, the same detections kept.
    assert threshold_with_margin(scores, threshold) == pytest.approx(0.4)
    assert threshold_with_margin(scores, 0.2) == pytest.approx(0.1)  # nothing lower: half way to 0
    assert threshold_with_margin(scores, np.inf) == np.inf  # nothing to keep stays so
    thresholds, precision, recall = precision_recall_curve(
        detections, scores, truths, max_distance=8
    )
    assert thresholds.tolist() == [0.9, 0.7, 0.6, 0.2]
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1, 1])


def test_threshold_sweep_equals_matching_each_threshold_separately() -> None:
    rng = np.random.default_rng(4)
    truths = rng.uniform(0, 200, (15, 2))
    detections = np.concatenate(
        [truths[:10] + rng.normal(0, 4, (10, 2)), rng.uniform(0, 200, (20, 2))]
    )
    scores = np.round(rng.uniform(0, 1, len(detections)), 1)  # many ties
    thresholds, precision, recall = precision_recall_curve(
        detections, scores, truths, max_distance=8
    )
    for threshold, p, r in zip(thresholds, precision, recall, strict=True):
        keep = scores >= threshold
        direct = match_detections(detections[keep], truths, max_distance=8, scores=scores[keep])
        assert (direct.precision, direct.recall) == pytest.approx((p, r))
    _, result, _ = f1_optimal_threshold(detections, scores, truths, max_distance=8)
    assert result.f1 == pytest.approx(
        max(2 * p * r / (p + r) if p + r else 0 for p, r in zip(precision, recall, strict=True))
    )


def test_false_positives_on_negative_tissue_weigh_as_the_area_they_stand_for() -> None:
    # Two figures found at 0.9 and 0.6; one false candidate at 0.7 on a tissue sample.
    detections = np.array([[0.0, 0.0], [100.0, 0.0], [50.0, 50.0]])
    scores = np.array([0.9, 0.6, 0.7])
    truths = np.array([[0.0, 0.0], [100.0, 0.0]])
    threshold, result, f1 = f1_optimal_threshold(detections, scores, truths, max_distance=8)
    assert threshold == 0.6 and f1 == pytest.approx(0.8)  # 2 TP, 1 FP
    # The sample stands for ten times its area: that one false candidate is ten.
    weights = np.array([1.0, 1.0, 10.0])
    threshold, result, f1 = f1_optimal_threshold(
        detections, scores, truths, max_distance=8, fp_weights=weights
    )
    assert threshold == 0.9 and result.tp == 1 and f1 == pytest.approx(2 / 3)
