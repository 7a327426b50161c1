"""A candidates layer (points or shapes, ours or a QuPath GeoJSON) as a
`detection.review.Review`: centres, scores and any decisions already in its features.

The review's columns are written back into the layer's features, where the widget keeps
them as decisions are made, so saving the layer saves the review.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_mitosis.detection.review import Review


def review_from_layer(layer: Any, reviewer: str) -> Review:
    """The review of ``layer``'s candidates, resumed from its features (``review``,
    ``reviewer``, ``review_time``, ``added``, or a QuPath ``classification``)."""
    features = layer.features
    if hasattr(layer, "shape_type"):  # shapes: their centres
        centres = np.array([np.asarray(s)[:, -2:].mean(axis=0) for s in layer.data])
    else:
        centres = np.asarray(layer.data)[:, -2:]
    n = len(centres)
    scores = features["score"].to_numpy(float) if "score" in features else np.full(n, np.nan)
    if "review" in features:
        decisions = features["review"].fillna("").astype(str).to_numpy(object)
    else:
        from napari_mitosis.detection.review import DECISION_OF_CLASS

        classes = features["classification"] if "classification" in features else [""] * n
        decisions = np.array([DECISION_OF_CLASS.get(str(c), "") for c in classes], object)

    def column(name: str, fill: Any) -> np.ndarray:
        return (
            features[name].fillna(fill).to_numpy(object)
            if name in features
            else np.full(n, fill, object)
        )

    review = Review(
        centres,
        scores,
        decisions,
        column("reviewer", ""),
        column("review_time", ""),
        column("added", False).astype(bool),
        reviewer=reviewer,
        p_atypical=features["p_atypical"].to_numpy(float) if "p_atypical" in features else None,
    )
    for name, values in (
        ("review", review.decisions),
        ("reviewer", review.reviewers),
        ("review_time", review.times),
        ("added", review.added),
    ):
        layer.features[name] = values
    return review
