"""A candidates layer (points or shapes, ours or a QuPath GeoJSON) as a
`detection.review.Review`: centres, scores and any decisions already in its features.

The review's columns are written back into the layer's features, where the widget keeps
them as decisions are made, so saving the layer saves the review.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_mitosis.detection.review import COLOURS, Review


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


def _colour_property(layer: Any) -> str:
    return "edge_color" if hasattr(layer, "shape_type") else "border_color"


def paint_all(layer: Any, decisions: np.ndarray) -> None:
    """Every candidate in its decision's colour."""
    colours = np.array([COLOURS[str(d)] for d in decisions], float).reshape(-1, 4)
    setattr(layer, _colour_property(layer), colours)


def paint_one(layer: Any, index: int, decision: str, shown: bool) -> None:
    """One candidate's colour (transparent when filtered out). Points: changed in place in
    the layer's public array (setting the whole array re-parses every colour: 80 ms for
    5,000 points); shapes have no such array, so theirs are set whole, publicly."""
    colour = np.array(COLOURS[decision], float)
    if not shown:
        colour[3] = 0.0
    if hasattr(layer, "shape_type"):
        colours = np.array(layer.edge_color, float)
        colours[index] = colour
        layer.edge_color = colours
        return
    layer.border_color[index] = colour  # the layer's own array
    layer.events.border_color()


def show_only(layer: Any, decisions: np.ndarray, shown: np.ndarray) -> None:
    """The filter on the layer: points hide, shapes (no ``shown``) turn transparent."""
    if hasattr(layer, "shown"):
        layer.shown = shown
        return
    colours = np.array([COLOURS[str(d)] for d in decisions], float).reshape(-1, 4)
    colours[~shown, 3] = 0.0
    layer.edge_color = colours
