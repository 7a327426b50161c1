"""A pathologist's review of mitosis candidates: one decision per candidate, undo, added
figures, and the QuPath classes and properties a review is saved and resumed with.

Napari-free, so the widget, the report and training read the same state. Each decision is
O(1) (arrays updated in place); `Review.order` and `Review.counts` are vectorised, so a
review of thousands of candidates stays responsive.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from napari_mitosis.io.geojson import CLASSIFIERS_KEY, REVIEW_CLASSES, REVIEW_KEY, Annotation

DECISIONS = ("accepted", "rejected", "atypical", "unsure")
#: The decisions that count as mitoses (atypical figures are mitoses).
COUNTED = ("accepted", "atypical")
#: decision → QuPath class; unreviewed candidates keep "Mitosis candidate".
QUPATH_CLASSES = REVIEW_CLASSES
DECISION_OF_CLASS = {v: k for k, v in QUPATH_CLASSES.items()}
ORDERS = ("score", "position", "unreviewed", "p_atypical")
#: decision → RGBA for drawing (unreviewed: yellow).
COLOURS = {
    "": (1.0, 0.85, 0.0, 1.0),
    "accepted": (0.1, 0.9, 0.2, 1.0),
    "atypical": (0.8, 0.2, 1.0, 1.0),
    "rejected": (0.55, 0.55, 0.55, 1.0),
    "unsure": (0.1, 0.6, 1.0, 1.0),
}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@dataclass
class Step:
    """What `Review.undo` restores."""

    index: int
    decision: str
    reviewer: str
    time: str
    added: bool = False  # the step added this candidate


@dataclass
class Review:
    """Candidates (level-0 (y, x) centres, scores) and the decision on each."""

    centres: np.ndarray
    scores: np.ndarray
    decisions: np.ndarray = None  # type: ignore[assignment]  # object array of DECISIONS or ""
    reviewers: np.ndarray = None  # type: ignore[assignment]
    times: np.ndarray = None  # type: ignore[assignment]
    added: np.ndarray = None  # type: ignore[assignment]
    reviewer: str = ""
    history: list[Step] = field(default_factory=list)
    #: A subtyping classifier's probability that each candidate is atypical (NaN: not
    #: scored) and the threshold at which it calls one (`detection.candidates`).
    p_atypical: np.ndarray = None  # type: ignore[assignment]
    atypical_threshold: float | None = None
    atypical_model: dict = field(default_factory=dict)  # {"model": name} of that classifier

    def __post_init__(self) -> None:
        self.centres = np.asarray(self.centres, float).reshape(-1, 2)
        n = len(self.centres)
        self.scores = np.asarray(self.scores, float).reshape(n)
        given = self.p_atypical
        self.p_atypical = np.full(n, np.nan) if given is None else np.asarray(given, float)
        for name, fill in (("decisions", ""), ("reviewers", ""), ("times", "")):
            value = getattr(self, name)
            setattr(
                self, name, np.full(n, fill, object) if value is None else np.asarray(value, object)
            )
        self.added = np.zeros(n, bool) if self.added is None else np.asarray(self.added, bool)
        unknown = set(self.decisions) - {"", *DECISIONS}
        if unknown:
            raise ValueError(f"unknown review decisions {sorted(unknown)}; known: {DECISIONS}")

    def __len__(self) -> int:
        return len(self.centres)

    def order(self, by: str = "score") -> np.ndarray:
        """Candidate indices in review order: ``score`` high → low, ``position`` (top to
        bottom in 1 mm-ish bands of 2048 px, left to right), ``unreviewed`` first (by
        score), or ``p_atypical`` high → low (the likeliest atypical figures first)."""
        if by not in ORDERS:
            raise ValueError(f"unknown order {by!r}; choose one of {ORDERS}")
        if by == "p_atypical":
            return np.argsort(-np.nan_to_num(self.p_atypical, nan=-1.0), kind="stable")
        if by == "position":
            band = np.floor(self.centres[:, 0] / 2048)
            return np.lexsort((self.centres[:, 1], band))
        by_score = np.argsort(-self.scores, kind="stable")
        if by == "score":
            return by_score
        reviewed = self.decisions[by_score] != ""
        return np.concatenate([by_score[~reviewed], by_score[reviewed]])

    def shown(
        self, which: str = "all", *, min_score: float = 0.0, min_p_atypical: float = 0.0
    ) -> np.ndarray:
        """Which candidates a filter keeps: ``all``, ``unreviewed`` or one decision, at or
        above ``min_score`` and ``min_p_atypical``. A candidate without the value (one the
        reviewer added has no score; no classifier ran) is kept: nothing says it is below."""
        if which != "all" and which not in ("unreviewed", *DECISIONS):
            raise ValueError(f"unknown filter {which!r}; choose all, unreviewed or {DECISIONS}")
        keep = np.ones(len(self), bool)
        if which != "all":
            keep = self.decisions.astype(str) == ("" if which == "unreviewed" else which)
        for values, least in ((self.scores, min_score), (self.p_atypical, min_p_atypical)):
            if least > 0:
                keep &= np.nan_to_num(np.asarray(values, float), nan=np.inf) >= least
        return keep

    def decide(self, index: int, decision: str) -> None:
        """Record ``decision`` ("" clears it) on candidate ``index``, undoably."""
        if decision not in ("", *DECISIONS):
            raise ValueError(f"unknown decision {decision!r}; choose one of {DECISIONS}")
        self.history.append(
            Step(index, self.decisions[index], self.reviewers[index], self.times[index])
        )
        self.decisions[index] = decision
        self.reviewers[index] = self.reviewer if decision else ""
        self.times[index] = now() if decision else ""

    def add(self, centre_yx: Sequence[float], decision: str = "accepted") -> int:
        """A missed mitosis the reviewer adds; returns its index."""
        self.centres = np.vstack([self.centres, np.asarray(centre_yx, float).reshape(1, 2)])
        self.scores = np.append(self.scores, np.nan)
        self.p_atypical = np.append(self.p_atypical, np.nan)
        self.decisions = np.append(self.decisions, np.array([decision], object))
        self.reviewers = np.append(self.reviewers, np.array([self.reviewer], object))
        self.times = np.append(self.times, np.array([now()], object))
        self.added = np.append(self.added, True)
        index = len(self.centres) - 1
        self.history.append(Step(index, "", "", "", added=True))
        return index

    def undo(self) -> Step | None:
        """Take back the last decision (or addition); returns what was undone."""
        if not self.history:
            return None
        step = self.history.pop()
        if step.added:
            keep = slice(0, step.index)
            self.centres, self.scores = self.centres[keep], self.scores[keep]
            self.p_atypical = self.p_atypical[keep]
            self.decisions, self.reviewers = self.decisions[keep], self.reviewers[keep]
            self.times, self.added = self.times[keep], self.added[keep]
        else:
            self.decisions[step.index] = step.decision
            self.reviewers[step.index] = step.reviewer
            self.times[step.index] = step.time
        return step

    def counts(self) -> dict[str, int]:
        """Candidates per decision, "unreviewed", and "mitoses" (accepted + atypical)."""
        values, numbers = np.unique(self.decisions.astype(str), return_counts=True)
        found = dict(zip(values.tolist(), numbers.tolist(), strict=True))
        out = {d: int(found.get(d, 0)) for d in DECISIONS}
        out["unreviewed"] = int(found.get("", 0))
        out["mitoses"] = out["accepted"] + out["atypical"]
        return out

    def counted(self) -> np.ndarray:
        """The centres that count as mitoses."""
        return self.centres[np.isin(self.decisions.astype(str), COUNTED)]

    def called_atypical(self) -> np.ndarray:
        """Which candidates the subtyping classifier calls atypical (none without one)."""
        if self.atypical_threshold is None:
            return np.zeros(len(self), bool)
        return np.nan_to_num(self.p_atypical, nan=-1.0) >= self.atypical_threshold

    def progress(self) -> str:
        done = int((self.decisions != "").sum())
        return f"{done} of {len(self)} reviewed"

    # --- saving and resuming ----------------------------------------------------------
    def to_annotations(self, half_size: float | None = None) -> list[Annotation]:
        """QuPath objects: a point per candidate (a box of ``half_size`` px around it if
        given), classified by decision, with score and review properties."""
        out = []
        for i, (y, x) in enumerate(self.centres):
            measurements = {} if np.isnan(self.scores[i]) else {"score": float(self.scores[i])}
            if not np.isnan(self.p_atypical[i]):
                measurements["p_atypical"] = float(self.p_atypical[i])
            review = {
                "decision": str(self.decisions[i]),
                "reviewer": str(self.reviewers[i]),
                "time": str(self.times[i]),
                "added": bool(self.added[i]),
            }
            if half_size:
                h = half_size
                corners = np.array([[y - h, x - h], [y - h, x + h], [y + h, x + h], [y + h, x - h]])
                shape = Annotation(corners, "rectangle", QUPATH_CLASSES[self.decisions[i]])
            else:
                shape = Annotation(np.array([[y, x]]), "point", QUPATH_CLASSES[self.decisions[i]])
            shape.measurements = measurements
            shape.object_type = "detection"
            shape.properties = {REVIEW_KEY: review}
            if self.atypical_threshold is not None:
                record = {"threshold": self.atypical_threshold, **self.atypical_model}
                shape.properties[CLASSIFIERS_KEY] = {"p_atypical": record}
            out.append(shape)
        return out

    @classmethod
    def from_annotations(cls, annotations: Sequence[Annotation], reviewer: str = "") -> Review:
        """A review from candidates or a saved review: classes map back to decisions, and
        saved review properties restore who decided when. A "Mitosis" with a detector's
        score and no review record is machine output from an older writer: a candidate;
        one drawn by hand (no score) is a pathologist's mitosis."""
        centres = np.array([a.coords.reshape(-1, 2).mean(axis=0) for a in annotations]).reshape(
            -1, 2
        )
        scores = np.array([a.measurements.get("score", np.nan) for a in annotations], float)
        p_atypical = np.array([a.measurements.get("p_atypical", np.nan) for a in annotations])
        record: dict = {}
        for a in annotations:  # the classifier's record, from the first candidate with one
            record = ((getattr(a, "properties", None) or {}).get(CLASSIFIERS_KEY) or {}).get(
                "p_atypical"
            ) or {}
            if record:
                break
        decisions, reviewers, times, added = [], [], [], []
        for a in annotations:
            saved = (getattr(a, "properties", None) or {}).get(REVIEW_KEY) or {}
            decision = saved.get("decision", DECISION_OF_CLASS.get(a.classification or "", ""))
            if not saved and decision == "accepted" and "score" in a.measurements:
                decision = ""  # an older writer's machine output ("Mitosis" with a score)
            decisions.append(decision if decision in DECISIONS else "")
            reviewers.append(saved.get("reviewer", ""))
            times.append(saved.get("time", ""))
            added.append(bool(saved.get("added", False)))
        review = cls(centres, scores, decisions, reviewers, times, np.array(added, bool), reviewer)
        review.p_atypical = p_atypical.reshape(len(review)).astype(float)
        if "threshold" in record:
            review.atypical_threshold = float(record["threshold"])
            review.atypical_model = {k: v for k, v in record.items() if k != "threshold"}
        return review
