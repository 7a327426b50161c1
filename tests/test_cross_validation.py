"""A user with a few hundred images trains by cross-validation: every image validates once,
whole groups stay in one fold, the saved ensemble averages its members and its threshold
rests on all out-of-fold scores; a cancelled run leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mitosis.classification.cross_validation import (
    calibrated_scores,
    member_calibration,
    train_cross_validated,
)
from napari_mitosis.classification.metrics import best_threshold
from napari_mitosis.classification.predictor import ClassifierPredictor, tta_views
from napari_mitosis.classification.training import ClassifierTraining, train_classifier
from napari_mitosis.models.checkpoint import ModelCard, load_checkpoint


def _images(n_groups: int = 6, per_group: int = 8, seed: int = 0):
    """Bright squares (class 1) or none (class 0) on noise, eight images per group."""
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    labels = np.tile([0, 1], n // 2)
    images = rng.integers(0, 80, (n, 16, 16, 3), dtype=np.uint8)
    images[labels == 1, 4:12, 4:12] = 220
    groups = np.repeat([f"slide{g}" for g in range(n_groups)], per_group)
    return images, labels, groups


CONFIG = dict(
    width=4, input_size=16, epochs=3, batch_size=8, learning_rate=1e-2, hed_jitter=0.0, device="cpu"
)


def test_every_image_is_scored_by_the_member_that_never_trained_on_it(tmp_path: Path) -> None:
    images, labels, groups = _images()
    out = tmp_path / "cv.safetensors"
    report = train_cross_validated(
        (images, labels), groups, out, ClassifierTraining(**CONFIG), folds=3
    )
    for g in np.unique(groups):  # a slide is never on both sides
        assert len(set(report.folds[groups == g])) == 1
    assert sorted(set(report.folds)) == [0, 1, 2]
    ensemble, card = load_checkpoint(out, task="classification")
    assert card.options["members"] == 3 and card.training["folds"] == 3
    members = list(ensemble.members)
    assert card.options["calibrated"] and report.calibration is not None
    scale = torch.from_numpy(report.calibration).float()
    assert torch.equal(ensemble.calibration, scale)
    for i, member in enumerate(members):  # member i's scores on fold i are the OOF scores
        predictor = ClassifierPredictor(member, card, "cpu", optimise=False)
        mine = report.folds == i
        rows = np.repeat(report.calibration[i : i + 1], mine.sum(), 0)
        np.testing.assert_allclose(
            calibrated_scores(predictor(images[mine]), rows), report.scores[mine], atol=1e-5
        )
    assert card.threshold == pytest.approx(best_threshold(labels, report.scores, "f_med"))
    assert card.metrics["cv_auc"] > 0.9  # the squares are easy to see
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():  # one module: the members' calibrated logits averaged
        mean = torch.stack([m(x) * a + b for m, (a, b) in zip(members, scale, strict=True)]).mean(0)
        assert torch.allclose(ensemble(x), mean, atol=1e-6)
        assert not torch.allclose(members[0](x), members[1](x))  # three models, not one
    history = out.with_suffix(".csv").read_text().splitlines()
    assert history[0].startswith("fold,epoch") and {r[0] for r in history[1:]} == {"0", "1", "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv.csv", "cv.safetensors"]


def test_members_of_different_confidence_are_put_on_one_scale() -> None:
    """Two folds rank their images equally well, one four times as sure: pooled, the sure
    fold's negatives outrank the other's positives. Platt scaling on each fold finds the
    (scale, shift) the labels were drawn with and pools them as one fold."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    z = rng.normal(size=4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-(2 * z - 1)))).astype(int)  # truth: 2z − 1
    fold_of = np.repeat([0, 1], 2000)
    logits = np.where(fold_of == 0, 4 * z + 3, z)  # fold 0: over-confident and shifted
    scores = 1 / (1 + np.exp(-logits))
    calibration = member_calibration(labels, scores, fold_of, 2)
    np.testing.assert_allclose(calibration[1], [2, -1], atol=0.2)
    np.testing.assert_allclose(calibration[0], [0.5, -1 - 3 * 0.5], atol=0.1)
    pooled = calibrated_scores(scores, calibration[fold_of])
    per_fold = np.mean([roc_auc_score(labels[fold_of == i], z[fold_of == i]) for i in (0, 1)])
    assert roc_auc_score(labels, scores) < per_fold - 0.05
    assert roc_auc_score(labels, pooled) == pytest.approx(per_fold, abs=0.01)
    one_class = member_calibration(np.r_[labels[:10], np.zeros(10, int)], scores[:20],
                                   np.repeat([0, 1], 10), 2)  # fmt: skip
    assert tuple(one_class[1]) == (1.0, 0.0)


def test_a_cancelled_cross_validation_leaves_nothing(tmp_path: Path) -> None:
    images, labels, groups = _images()

    def cancel_in_the_second_fold(epoch: int, total: int, record: dict) -> None:
        if record["fold"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_cross_validated(
            (images, labels),
            groups,
            tmp_path / "cv.safetensors",
            ClassifierTraining(**CONFIG),
            folds=2,
            progress=cancel_in_the_second_fold,
        )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="4 folds need at least 4"):
        train_cross_validated(
            (images[:16], labels[:16]), groups[:16], tmp_path / "x.safetensors", folds=4
        )


def test_an_ensemble_is_not_fine_tuned_as_one(tmp_path: Path) -> None:
    images, labels, groups = _images(n_groups=4)
    out = tmp_path / "cv.safetensors"
    train_cross_validated(
        (images, labels), groups, out, ClassifierTraining(**{**CONFIG, "epochs": 1}), folds=2
    )
    with pytest.raises(ValueError, match="ensemble of 2 models cannot be fine-tuned"):
        train_classifier(
            (images, labels),
            (images, labels),
            tmp_path / "ft.safetensors",
            ClassifierTraining(**CONFIG, init=str(out)),
        )


def test_test_time_augmentation_uses_the_flips_the_model_trained_on() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    upright = tta_views(x, "horizontal")
    assert len(upright) == 2 and torch.equal(upright[1], x.flip(3))  # never upside down
    assert len(tta_views(x)) == 8
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 1)).eval()
    card = ModelCard(
        "small_cnn", task="classification", input_size=16, training={"flips": "horizontal"}
    )
    tiles = np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    predictor = ClassifierPredictor(model, card, "cpu", tta=True, optimise=False)
    x = predictor.prepare(tiles)
    with torch.no_grad():
        expected = (torch.sigmoid(model(x)) + torch.sigmoid(model(x.flip(3)))) / 2
    np.testing.assert_allclose(predictor(tiles), expected[:, 0].numpy(), atol=1e-6)


def test_folds_are_refused_where_slides_train(tmp_path: Path, capsys) -> None:
    from napari_mitosis.cli import main

    slide = tmp_path / "slide.tif"
    command = ["train-classifier", str(slide), "--annotations", str(tmp_path), "--folds", "3"]
    assert main([*command, "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "--folds trains on class folders" in capsys.readouterr().err


def test_impossible_fold_counts_name_the_folder(tmp_path: Path, capsys) -> None:
    from PIL import Image

    from napari_mitosis.cli import main

    for c in ("benign", "malignant"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (16, 16), (40 * i, 0, 0)).save(tmp_path / "data" / c / f"{i}.png")
    command = ["train-classifier", str(tmp_path / "data"), "--out", str(tmp_path / "m.safetensors")]
    assert main([*command, "--folds", "0"]) == 2
    assert "--folds must be 1" in capsys.readouterr().err
    assert main([*command, "--folds", "9", "--test-fraction", "0"]) == 2
    assert f"{tmp_path / 'data'}: 9 folds need at least 9" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_a_terminated_cross_validation_leaves_nothing(tmp_path: Path) -> None:
    """The Train widget's Cancel ends the command with SIGTERM: its fold folder goes too."""
    import subprocess
    import sys
    import time

    from PIL import Image

    data = tmp_path / "data"
    images, labels, _groups = _images(n_groups=4, per_group=4)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        (data / ("benign", "malignant")[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(data / ("benign", "malignant")[label] / f"{i}.png")
    out = tmp_path / "models" / "cv.safetensors"
    command = [sys.executable, "-m", "napari_mitosis", "train-classifier", str(data)]
    command += ["--out", str(out), "--folds", "2", "--epochs", "100000", "--patience", "100000"]
    command += ["--width", "4", "--batch-size", "4", "--test-fraction", "0", "--device", "cpu"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(out.parent.glob(".cv-folds-*/fold0.safetensors")):  # training has begun
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.terminate()
    _stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130 and "cancelled" in stderr
    assert list(out.parent.iterdir()) == []
