"""A model trained with ``--tta`` is meant to run with its flips averaged: its threshold
is chosen on averaged validation scores, cross-validation scores its out-of-fold images
so, and every prediction from its card averages the flips unless told ``--no-tta``."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import napari_mitosis.classification.cross_validation as cross_validation
from napari_mitosis.classification.metrics import best_threshold
from napari_mitosis.classification.predictor import ClassifierPredictor
from napari_mitosis.classification.training import ClassifierTraining, train_classifier
from napari_mitosis.cli import main
from napari_mitosis.models.checkpoint import load_checkpoint


def _bars(n: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A bright bar in one corner (class 1) or none: not symmetric, so each flip of an
    image scores differently."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    images = rng.integers(0, 90, (n, 16, 16, 3), dtype=np.uint8)
    images[labels == 1, 1:4, 1:10] = 230
    return images, labels


def _dihedral(images: np.ndarray) -> list[np.ndarray]:
    turns = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    return turns + [t[:, :, ::-1] for t in turns]


CONFIG = dict(width=4, input_size=16, epochs=3, batch_size=8, hed_jitter=0.0, device="cpu")


def test_a_model_trained_with_tta_runs_with_it_and_its_threshold_is_from_it(
    tmp_path: Path,
) -> None:
    images, labels = _bars()
    val_images, val_labels = _bars(16, seed=1)
    out = tmp_path / "m.safetensors"
    train_classifier((images, labels), (val_images, val_labels), out,
                     ClassifierTraining(**CONFIG, tta=True))  # fmt: skip
    model, card = load_checkpoint(out, task="classification")
    assert card.training["tta"] is True
    averaged = ClassifierPredictor(model, card, "cpu", optimise=False)
    single = ClassifierPredictor(model, card, "cpu", tta=False, optimise=False)
    assert averaged.tta and not single.tta and single.trained_with_tta
    scores = averaged(val_images)
    by_hand = np.mean([single(np.ascontiguousarray(v)) for v in _dihedral(val_images)], axis=0)
    assert np.allclose(scores, by_hand, atol=1e-6)
    assert not np.allclose(scores, single(val_images), atol=1e-3)
    assert card.threshold == pytest.approx(best_threshold(val_labels, scores, "f_med"))
    assert card.metrics["val_auc"] == pytest.approx(roc_auc_score(val_labels, scores))
    plain_out = tmp_path / "plain.safetensors"
    train_classifier((images, labels), (val_images, val_labels), plain_out,
                     ClassifierTraining(**CONFIG))  # fmt: skip
    assert not ClassifierPredictor(*load_checkpoint(plain_out), "cpu").tta


def test_cross_validation_scores_out_of_fold_images_with_the_flips(
    tmp_path: Path, monkeypatch
) -> None:
    images, labels = _bars(24)
    made: list[ClassifierPredictor] = []
    real = cross_validation.ClassifierPredictor

    def spy(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(cross_validation, "ClassifierPredictor", spy)
    groups = np.arange(len(labels)) // 2
    report = cross_validation.train_cross_validated(
        (images, labels), groups, tmp_path / "cv.safetensors",
        ClassifierTraining(**CONFIG, tta=True), folds=2,
    )  # fmt: skip
    assert len(made) == 2 and all(p.tta for p in made)
    ensemble = ClassifierPredictor(*load_checkpoint(tmp_path / "cv.safetensors"), "cpu")
    assert ensemble.tta and report.card.training["tta"] is True


def _scores(table: Path) -> np.ndarray:
    with table.open(newline="") as handle:
        return np.asarray([float(r["score"]) for r in csv.DictReader(handle)])


def test_evaluation_follows_the_card_unless_told_no_tta(tmp_path: Path) -> None:
    images, labels = _bars(16)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = tmp_path / "data" / ("a", "b")[label] / f"{i}.png"
        name.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(name)
    out = tmp_path / "m.safetensors"
    data = str(tmp_path / "data")
    assert main(["train-classifier", data, "--width", "4", "--epochs", "2", "--tta",
                 "--test-fraction", "0", "--val-fraction", "0.25", "--device", "cpu",
                 "--out", str(out)]) == 0  # fmt: skip
    runs = {}
    for flag in ([], ["--no-tta"], ["--tta"]):
        folder = tmp_path / f"eval{len(runs)}"
        evaluate = ["evaluate-classifier", data, "--model", str(out), "--out", str(folder)]
        assert main([*evaluate, *flag, "--device", "cpu"]) == 0
        runs[" ".join(flag)] = _scores(folder / "evaluation.csv")
    assert np.allclose(runs[""], runs["--tta"]) and not np.allclose(runs[""], runs["--no-tta"])
