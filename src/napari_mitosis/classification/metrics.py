"""Classification metrics from scikit-learn, and the operating threshold.

F_med is the harmonic mean of sensitivity and specificity (the metric of the
breast-ultrasound and IDC literature our users compare against); it is computed from
scikit-learn's confusion matrix, not by hand-counting. Models of K > 2 classes (tissue
types) are scored by the argmax: one-vs-rest macro AUC, macro F1, balanced accuracy (the
mean per-class sensitivity) and F_med of the mean per-class sensitivity and specificity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import (
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_score,
    roc_auc_score,
    roc_curve,
)

from napari_mitosis.io.output_file import atomic_output

MONITORED = ("auc", "f1", "f_med", "loss")


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


@dataclass(frozen=True)
class BinaryMetrics:
    auc: float
    sensitivity: float
    specificity: float
    precision: float
    f1: float
    f_med: float
    balanced_accuracy: float
    threshold: float
    n: int

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}

    def summary(self) -> str:
        return (
            f"AUC {self.auc:.3f}  sensitivity {self.sensitivity:.3f}  specificity "
            f"{self.specificity:.3f}  precision {self.precision:.3f}  F1 {self.f1:.3f}  "
            f"F_med {self.f_med:.3f}  balanced accuracy {self.balanced_accuracy:.3f}  "
            f"(threshold {self.threshold:.3f}, n = {self.n})"
        )


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> BinaryMetrics:
    """Metrics of positive-class ``scores`` against 0/1 ``labels`` at ``threshold``."""
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, float).ravel()
    predicted = (scores >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    sensitivity = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    both = len(np.unique(labels)) == 2
    return BinaryMetrics(
        auc=float(roc_auc_score(labels, scores)) if both else float("nan"),
        sensitivity=float(sensitivity),
        specificity=float(specificity),
        precision=float(precision_score(labels, predicted, zero_division=0.0)),
        f1=float(f1_score(labels, predicted, zero_division=0.0)),
        f_med=harmonic_mean(sensitivity, specificity),
        balanced_accuracy=float(balanced_accuracy_score(labels, predicted)) if both else 0.0,
        threshold=float(threshold),
        n=len(labels),
    )


@dataclass(frozen=True)
class MulticlassMetrics:
    """Argmax metrics of K-class probabilities; ``recall`` per class, in class order."""

    auc: float  # one-vs-rest, macro
    f1: float  # macro
    f_med: float
    balanced_accuracy: float
    accuracy: float
    recall: tuple[float, ...]
    n: int

    def as_dict(self) -> dict[str, float]:
        values = {k: float(v) for k, v in self.__dict__.items() if k != "recall"}
        return values | {f"recall_{k}": float(r) for k, r in enumerate(self.recall)}

    def summary(self, classes: tuple[str, ...] | None = None) -> str:
        names = classes or tuple(str(k) for k in range(len(self.recall)))
        recalls = ", ".join(f"{c} {r:.3f}" for c, r in zip(names, self.recall, strict=True))
        return (
            f"macro AUC {self.auc:.3f}  macro F1 {self.f1:.3f}  F_med {self.f_med:.3f}  "
            f"balanced accuracy {self.balanced_accuracy:.3f}  accuracy {self.accuracy:.3f}  "
            f"recall: {recalls}  (n = {self.n})"
        )


def multiclass_metrics(labels: np.ndarray, probabilities: np.ndarray) -> MulticlassMetrics:
    """Metrics of (N, K) class ``probabilities`` against labels 0…K−1, by the argmax."""
    labels = np.asarray(labels).astype(int).ravel()
    probabilities = np.asarray(probabilities, float)
    k = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=list(range(k)))
    truths, calls = matrix.sum(axis=1), matrix.sum(axis=0)
    hits = np.diag(matrix)
    present = truths > 0
    recall = np.where(present, hits / np.maximum(truths, 1), 0.0)
    negatives = len(labels) - truths
    specificity = (negatives - (calls - hits)) / np.maximum(negatives, 1)
    sensitivity = float(recall[present].mean()) if present.any() else 0.0
    try:
        auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", labels=list(range(k))))
    except ValueError:  # a class missing from these labels
        auc = float("nan")
    macro_specificity = float(specificity[present].mean()) if present.any() else 0.0
    f1 = f1_score(labels, predicted, labels=list(range(k)), average="macro", zero_division=0.0)
    return MulticlassMetrics(
        auc=auc,
        f1=float(f1),
        f_med=harmonic_mean(sensitivity, macro_specificity),
        balanced_accuracy=sensitivity,
        accuracy=float((predicted == labels).mean()) if len(labels) else 0.0,
        recall=tuple(float(r) for r in recall),
        n=len(labels),
    )


def best_threshold(labels: np.ndarray, scores: np.ndarray, metric: str = "f_med") -> float:
    """The score threshold that maximises ``metric`` ("f_med" or "f1") on these scores.

    Candidates are scikit-learn's ROC thresholds (every distinct score); ties keep the
    highest threshold.
    """
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, float).ravel()
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if metric == "f1":
        positives, negatives = labels.sum(), len(labels) - labels.sum()
        tp, fp = tpr * positives, fpr * negatives
        values = 2 * tp / np.maximum(2 * tp + fp + (positives - tp), 1)
    else:
        sens, spec = tpr, 1 - fpr
        values = np.where(sens + spec > 0, 2 * sens * spec / np.maximum(sens + spec, 1e-12), 0)
    return float(thresholds[int(np.argmax(values))])


def write_roc_plot(
    path: str | Path,
    labels: np.ndarray,
    scores: np.ndarray,
    metrics: BinaryMetrics,
    *,
    title: str = "ROC",
    overwrite: bool = False,
) -> Path:
    """ROC curve with the operating point, as PNG (matplotlib Agg, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fpr, tpr, _ = roc_curve(np.asarray(labels).astype(int), np.asarray(scores, float))
    figure = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], color="0.8", lw=0.8)
    axes.plot(fpr, tpr, lw=1.6, label=f"AUC {metrics.auc:.3f}")
    axes.plot(
        1 - metrics.specificity,
        metrics.sensitivity,
        "o",
        color="tab:red",
        label=f"threshold {metrics.threshold:.2f}: sens {metrics.sensitivity:.2f}, "
        f"spec {metrics.specificity:.2f}",
    )
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="1 − specificity",
        ylabel="sensitivity",
        title=f"{title} (n = {metrics.n})",
    )
    axes.legend(loc="lower right", fontsize=8)
    with atomic_output(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)


def write_confusion_plot(
    path: str | Path,
    labels: np.ndarray,
    probabilities: np.ndarray,
    classes: tuple[str, ...],
    *,
    title: str = "confusion",
    overwrite: bool = False,
) -> Path:
    """A K-class model's confusion matrix (rows: truth, normalised per row), as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    figure = Figure(figsize=(5, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    ConfusionMatrixDisplay.from_predictions(
        np.asarray(labels).astype(int),
        np.asarray(probabilities).argmax(axis=1),
        labels=list(range(len(classes))),
        display_labels=list(classes),
        normalize="true",
        ax=axes,
        colorbar=False,
        values_format=".2f",
    )
    axes.set_title(f"{title} (n = {len(labels)})")
    with atomic_output(path, overwrite=overwrite) as tmp:
        figure.savefig(tmp, format="png")
    return Path(path)
