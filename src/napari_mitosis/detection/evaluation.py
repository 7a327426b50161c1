"""Scoring a detector over a test set the way the mitosis challenges do.

All fields are pooled into one matching (`matching.pool_fields`): TP/FP/FN, precision,
recall and F1 at the chosen score threshold, the F1-optimal threshold, and the
precision-recall curve, which is written as a PNG (matplotlib, no pyplot state).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mitosis.detection.matching import (
    DEFAULT_DISTANCE_UM,
    MatchResult,
    f1_optimal_threshold,
    match_detections,
    max_distance_px,
    pool_fields,
    precision_recall_curve,
)
from napari_mitosis.io.detections import Detections
from napari_mitosis.io.output_file import atomic_output


@dataclass(frozen=True)
class FieldScore:
    name: str
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class DetectorEvaluation:
    threshold: float  # the score threshold the headline counts use
    result: MatchResult  # pooled matching at ``threshold``
    best_threshold: float  # the F1-optimal threshold on this set
    best: MatchResult
    thresholds: np.ndarray  # precision-recall curve, highest threshold first
    precision: np.ndarray
    recall: np.ndarray
    fields: tuple[FieldScore, ...]
    distance_um: float

    def as_dict(self) -> dict[str, float]:
        """The headline numbers, for ``--json``: at ``threshold`` and at the best one."""
        r = self.result
        return {
            "recall": r.recall,
            "precision": r.precision,
            "f1": r.f1,
            "false_positives_per_image": r.fp / max(len(self.fields), 1),
            "tp": r.tp,
            "fp": r.fp,
            "fn": r.fn,
            "threshold": float(self.threshold),
            "n": len(self.fields),
            "best_threshold": float(self.best_threshold),
            "best_f1": self.best.f1,
        }

    def table(self, groups: dict[str, str] | None = None) -> str:
        """Per image and overall, as MIDOG reports it: TP, FP, FN, precision, recall and
        F1 at the threshold, the overall F1 from the pooled counts; with ``groups`` (image
        → tumour type), a pooled row per type too."""
        rows = [(f.name, f.tp, f.fp, f.fn) for f in self.fields]
        if groups:
            for group in sorted(set(groups.values()) - {""}):
                members = [f for f in self.fields if groups.get(f.name) == group]
                rows.append(
                    (
                        f"[{group}]",
                        *(sum(getattr(f, k) for f in members) for k in ("tp", "fp", "fn")),
                    )
                )
        r = self.result
        rows.append(("overall", r.tp, r.fp, r.fn))
        width = max(len(str(name)) for name, *_ in rows)
        lines = [f"{'image':<{width}}  {'TP':>5} {'FP':>5} {'FN':>5}  precision recall     F1"]
        for name, tp, fp, fn in rows:
            m = MatchResult(tp, fp, fn, np.zeros(0, bool), np.zeros((0, 2), int))
            lines.append(
                f"{name:<{width}}  {tp:>5} {fp:>5} {fn:>5}  "
                f"{m.precision:>9.3f} {m.recall:>6.3f} {m.f1:>6.3f}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        r, b = self.result, self.best
        return "\n".join(
            [
                f"{len(self.fields)} images, hit radius {self.distance_um:g} µm",
                f"at threshold {self.threshold:.3f}: TP {r.tp}  FP {r.fp}  FN {r.fn}  "
                f"precision {r.precision:.3f}  recall {r.recall:.3f}  F1 {r.f1:.3f}",
                f"F1-optimal threshold {self.best_threshold:.3f}: TP {b.tp}  FP {b.fp}  "
                f"FN {b.fn}  precision {b.precision:.3f}  recall {b.recall:.3f}  F1 {b.f1:.3f}",
            ]
        )


def evaluate_detections(
    fields: Sequence[tuple[str, Detections, np.ndarray, float | None]],
    *,
    threshold: float,
    distance_um: float = DEFAULT_DISTANCE_UM,
) -> DetectorEvaluation:
    """Score ``(name, detections, true centres (y, x) px, µm/px)`` per image.

    Pass detections with every score (not only those above ``threshold``) so the curve and
    the F1-optimal threshold see the whole range.
    """
    if not fields:
        raise ValueError("nothing to evaluate: no images")
    per_field = []
    for name, found, truth, mpp in fields:
        keep = found.scores >= threshold
        match = match_detections(
            found.centres[keep],
            truth,
            max_distance=max_distance_px(mpp, distance_um),
            scores=found.scores[keep],
        )
        per_field.append(FieldScore(name, match.tp, match.fp, match.fn))
    centres, scores, truths, radius = pool_fields(
        [(f.centres, f.scores, truth, mpp) for _, f, truth, mpp in fields], distance_um
    )
    keep = scores >= threshold
    result = match_detections(centres[keep], truths, max_distance=radius, scores=scores[keep])
    best_threshold, best, _ = f1_optimal_threshold(centres, scores, truths, max_distance=radius)
    thresholds, precision, recall = precision_recall_curve(
        centres, scores, truths, max_distance=radius
    )
    return DetectorEvaluation(
        threshold,
        result,
        float(best_threshold),
        best,
        thresholds,
        precision,
        recall,
        tuple(per_field),
        distance_um,
    )


def write_evaluation_csv(
    path: str | Path, evaluation: DetectorEvaluation, *, overwrite: bool = False
) -> Path:
    """One row per image and a final ``all`` row (pooled), at the evaluation's threshold."""
    with atomic_output(path, overwrite=overwrite) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "tp", "fp", "fn", "precision", "recall", "f1", "threshold"])
        for f in evaluation.fields:
            m = MatchResult(f.tp, f.fp, f.fn, np.zeros(0, bool), np.zeros((0, 2), int))
            writer.writerow(
                [
                    f.name,
                    f.tp,
                    f.fp,
                    f.fn,
                    f"{m.precision:.4f}",
                    f"{m.recall:.4f}",
                    f"{m.f1:.4f}",
                    f"{evaluation.threshold:.4f}",
                ]
            )
        r = evaluation.result
        writer.writerow(
            [
                "all",
                r.tp,
                r.fp,
                r.fn,
                f"{r.precision:.4f}",
                f"{r.recall:.4f}",
                f"{r.f1:.4f}",
                f"{evaluation.threshold:.4f}",
            ]
        )
    return Path(path)


def write_pr_plot(
    path: str | Path, evaluation: DetectorEvaluation, *, overwrite: bool = False
) -> Path:
    """Precision-recall curve with the used and the F1-optimal operating points, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for f1 in (0.2, 0.4, 0.6, 0.8):  # iso-F1 guides, as in scikit-learn's examples
        recall = np.linspace(f1 / (2 - f1) + 1e-3, 1, 100)
        axes.plot(recall, f1 * recall / (2 * recall - f1), color="0.85", lw=0.8)
        axes.annotate(f"F1={f1:.1f}", (0.9, f1 * 0.9 / (1.8 - f1) + 0.02), color="0.6", size=7)
    if len(evaluation.recall):
        axes.step(np.r_[0, evaluation.recall], np.r_[1, evaluation.precision], where="post", lw=1.6)
    r, b = evaluation.result, evaluation.best
    axes.plot(
        r.recall,
        r.precision,
        "o",
        color="tab:red",
        label=f"threshold {evaluation.threshold:.2f}: F1 {r.f1:.3f}",
    )
    axes.plot(
        b.recall,
        b.precision,
        "s",
        mfc="none",
        color="tab:green",
        label=f"F1-optimal {evaluation.best_threshold:.2f}: F1 {b.f1:.3f}",
    )
    axes.set(
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"Mitosis detection ({len(evaluation.fields)} images, "
        f"{evaluation.distance_um:g} µm radius)",
    )
    axes.legend(loc="lower left", fontsize=8)
    with atomic_output(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)
