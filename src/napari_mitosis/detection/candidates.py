"""Crop classifiers on each mitosis candidate: atypical vs normal (subtyping) and a
second-stage check (mitosis vs imposter), as the top MIDOG entries chain them.

Each candidate gets the crop its classifier was trained on: the classifier's central crop
(``centre_crop`` px, else ``input_size``) at its own µm/px, centred on the candidate and
read through the slide's levels (`Slide.model_level`, resampled when no level matches),
then resized to the input as the training images were (`io.class_folders.resize_rgb`).
So a figure scored here and the same figure's saved crop scored by ``evaluate-classifier``
get the same probability. Crops that run over the slide's edge are completed by
mirroring the tissue inside (`numpy.pad`'s "symmetric"), which keeps its stain and texture
where a constant fill would show the model an edge it never saw. The crops go through
the one tiled engine (`iter_tiled`): batched, read ahead, with progress and Cancel.

A two-class classifier adds ``p_<positive class>`` (``p_atypical``); a K-class one a
``p_<class>`` column per class; the verifier adds ``p_mitosis``. Each column's model and
threshold are kept with the results (`CandidateScores`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mitosis.classification.predictor import ClassifierPredictor
from napari_mitosis.engine.tiled_inference import Progress, TiledRun
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.io.class_folders import resize_rgb
from napari_mitosis.io.detections import Detections
from napari_mitosis.io.resampled import ResampledLevel, model_scale
from napari_mitosis.io.slide import Slide

#: The verifier's column, whatever its classes are called.
VERIFY_COLUMN = "p_mitosis"


class _InOrder:
    """A merger that keeps the model's outputs in the order the crops were given."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []

    def add(self, origins: np.ndarray, outputs: np.ndarray) -> None:
        self.parts.append(np.asarray(outputs))

    def finish(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0)


def crop_side(predictor: ClassifierPredictor) -> int:
    """Pixels (at the classifier's µm/px) of the crop it was trained on."""
    return int(predictor.card.centre_crop or predictor.card.input_size)


class CandidateRun(TiledRun):
    """Crops centred on ``centres`` ((n, 2) ``(y, x)`` in ``source``'s pixels) through a
    classifier, batch by batch; ``result()`` is (n,) or (n, K) probabilities."""

    def __init__(
        self,
        source: Any,
        predictor: ClassifierPredictor,
        centres: np.ndarray,
        *,
        batch_size: int = 32,
    ) -> None:
        self.source, self.predictor, self.batch_size = source, predictor, batch_size
        self.side = crop_side(predictor)
        self.size = predictor.card.input_size
        centres = np.asarray(centres, float).reshape(-1, 2)
        # Crop edges at whole pixels: the crop's middle is the candidate (to half a pixel).
        self.origins = np.round(centres - self.side / 2).astype(np.int64)
        self.grid = TileGrid.over(source.shape, self.side, 0)
        self.merger = _InOrder()

    @property
    def read_px(self) -> int:
        return self.side

    def read(self, y: int, x: int) -> np.ndarray:
        height, width = int(self.source.shape[0]), int(self.source.shape[1])
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + self.side, height), min(x + self.side, width)
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"a candidate at ({y}, {x}) lies outside the {width} × {height} image")
        crop = np.asarray(self.source[y0:y1, x0:x1])
        if crop.ndim == 2:
            crop = np.repeat(crop[..., None], 3, axis=2)
        pad = [(y0 - y, y + self.side - y1), (x0 - x, x + self.side - x1), (0, 0)]
        if any(p for pair in pad for p in pair):
            crop = np.pad(crop, pad, mode="symmetric")
        return resize_rgb(np.ascontiguousarray(crop[..., :3]), self.size)

    def result(self) -> np.ndarray:
        return self.merger.finish()


def _at_model_scale(image: Slide | np.ndarray, card: Any, mpp: float | None) -> tuple[Any, float]:
    """The pixels the classifier reads and level-0 pixels per pixel of them."""
    if isinstance(image, Slide):
        where = image.model_level(card.mpp, tolerance=card.mpp_tolerance)
        return where["source"], where["downsample"]  # square pixels
    _, factor = model_scale([mpp] if mpp else [], card.mpp, card.mpp_tolerance)
    return (image if factor == 1 else ResampledLevel(image, factor)), factor


def score_candidates(
    image: Slide | np.ndarray,
    centres_yx: np.ndarray,
    predictor: ClassifierPredictor,
    *,
    mpp: float | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Probabilities for crops centred on level-0 ``centres_yx`` of a slide (or an
    in-memory image of ``mpp`` µm/px), read at the classifier's µm/px: (n,) for a
    one-output model, (n, K) for K classes."""
    centres_yx = np.asarray(centres_yx, float).reshape(-1, 2)
    if not len(centres_yx):
        outputs = predictor.outputs()
        return np.zeros(0) if outputs == 1 else np.zeros((0, outputs))
    run = candidate_run(image, centres_yx, predictor, mpp=mpp, batch_size=batch_size)
    run.run(progress, should_stop)
    return run.result()


def candidate_run(
    image: Slide | Any,
    centres_yx: np.ndarray,
    predictor: ClassifierPredictor,
    *,
    mpp: float | None = None,
    batch_size: int = 32,
) -> CandidateRun:
    """The run `score_candidates` drives, for callers that step it themselves (a napari
    worker yields between its batches): ``image`` a slide, or a level-0 array (NumPy or
    Dask) of ``mpp`` µm/px; ``centres_yx`` in its level-0 pixels."""
    source, downsample = _at_model_scale(image, predictor.card, mpp)
    centres_yx = np.asarray(centres_yx, float).reshape(-1, 2)
    return CandidateRun(source, predictor, centres_yx / downsample, batch_size=batch_size)


def probability_columns(
    predictor: ClassifierPredictor, scores: np.ndarray
) -> dict[str, np.ndarray]:
    """``p_<positive class>`` for a one-output model, ``p_<class>`` each for K outputs."""
    classes = tuple(predictor.card.classes)
    if scores.ndim == 1:
        return {f"p_{classes[-1]}": scores}
    return {f"p_{c}": scores[:, k] for k, c in enumerate(classes)}


@dataclass
class CandidateScores:
    """Columns of probabilities per candidate, and which model gave each at which
    threshold (``{column: {"model", "threshold"}}``, saved under `io.geojson.CLASSIFIERS_KEY`)."""

    columns: dict[str, np.ndarray] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def verified(self) -> np.ndarray | None:
        """Which candidates the verifier keeps (None without a verifier)."""
        if VERIFY_COLUMN not in self.columns:
            return None
        return self.columns[VERIFY_COLUMN] >= self.models[VERIFY_COLUMN]["threshold"]

    def subset(self, keep: np.ndarray) -> CandidateScores:
        return CandidateScores({k: v[keep] for k, v in self.columns.items()}, self.models)


def classify_candidates(
    image: Slide | np.ndarray,
    centres_yx: np.ndarray,
    *,
    mpp: float | None = None,
    subtype: ClassifierPredictor | None = None,
    verify: ClassifierPredictor | None = None,
    names: tuple[str | None, str | None] = (None, None),
    batch_size: int = 32,
    progress: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> CandidateScores:
    """Every candidate through the subtyping classifier and/or the verifier. ``names``
    are the two models' names for the record; ``progress(stage, done, total)``; ``mpp``:
    an in-memory image's µm/px."""
    out = CandidateScores()
    for stage, predictor, name in (("verify", verify, names[1]), ("subtype", subtype, names[0])):
        if predictor is None:
            continue
        report = None if progress is None else (lambda d, t, s=stage: progress(s, d, t))
        scores = score_candidates(
            image, centres_yx, predictor, mpp=mpp, batch_size=batch_size, progress=report,
            should_stop=should_stop,
        )  # fmt: skip
        columns = probability_columns(predictor, scores)
        if stage == "verify":
            if scores.ndim != 1:
                raise ValueError(
                    f"the verifier {name or ''} has {scores.shape[1]} classes; it must give one "
                    "probability (mitosis vs not)"
                )
            columns = {VERIFY_COLUMN: scores}
        record = {
            "model": name or predictor.card.architecture,
            "threshold": predictor.card.threshold,
        }
        out.columns.update(columns)
        out.models.update({k: record for k in columns})
    return out


def subtype_steps(
    image: Any,
    centres_yx: np.ndarray,
    predictor: ClassifierPredictor,
    *,
    name: str | None = None,
    mpp: float | None = None,
    batch_size: int = 32,
) -> Generator[tuple[int, int], None, CandidateScores]:
    """`classify_candidates` with one subtyping classifier, for a caller that drives the
    batches (a napari worker yields between them, for progress and Cancel): yields
    ``(crops done, total)``, returns the `CandidateScores`."""
    run = candidate_run(image, centres_yx, predictor, mpp=mpp, batch_size=batch_size)
    yield from run.steps()
    columns = probability_columns(predictor, run.result())
    record = {"model": name or predictor.card.architecture, "threshold": predictor.card.threshold}
    return CandidateScores(columns, dict.fromkeys(columns, record))


def with_scores(
    detections: Detections, scores: CandidateScores, *, drop_unverified: bool = False
) -> Detections:
    """``detections`` with the probability columns as measurements; ``drop_unverified``
    keeps only those the verifier passes."""
    measured = {**detections.measurements, **scores.columns}
    found = Detections(
        detections.boxes, detections.scores, detections.classes, detections.mpp, measured
    )
    keep = scores.verified()
    return found.subset(keep) if drop_unverified and keep is not None else found
