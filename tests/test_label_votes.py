"""A user whose images carry several experts' votes trains on the share of votes (soft
labels) while the class folders still decide validation and the test split; a user who
asks for a cosine learning-rate schedule gets one that ends at zero."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import bright_squares
from napari_mitosis.classification.predictor import ClassifierPredictor
from napari_mitosis.classification.training import (
    ClassifierTraining,
    _scheduler,
    train_classifier,
)
from napari_mitosis.cli import main
from napari_mitosis.io.class_folders import class_folders
from napari_mitosis.models.checkpoint import load_checkpoint, read_card


def _squares(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return bright_squares(n, seed)


def _folder(root: Path, table: str) -> Path:
    images, labels = _squares(8)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = root / ("normal", "atypical")[label] / f"{i}.png"
        name.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(name)
    (root / "labels.csv").write_text(table)
    return root


TABLE = (
    "file,slide,e1,e2,e3\n"
    "atypical/1.png,s1,True,True,False\n"
    "atypical/3.png,s2,yes,1,true\n"
    "normal/0.png,s1,False,0,no\n"
    "normal/2.png,s2,True,false,False\n"
    "atypical/5.png,s3,False,False,True\n"
    "normal/4.png,s3,0,0,0\n"
)


def test_votes_are_each_images_share_of_yes(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", TABLE)
    folder = class_folders(root, ("normal", "atypical"))
    votes = folder.votes(root, ("e1", "e2", "e3"))
    shares = dict(zip((p.name for p in folder.paths), votes, strict=True))
    assert shares["1.png"] == pytest.approx(2 / 3) and shares["3.png"] == 1.0
    assert shares["0.png"] == 0.0 and shares["2.png"] == pytest.approx(1 / 3)
    assert shares["5.png"] == pytest.approx(1 / 3)
    assert shares["7.png"] == 1.0 and shares["6.png"] == 0.0  # unlisted: their folder's class


def test_bad_vote_tables_are_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "data", TABLE.replace("yes,1,true", "yes,maybe,true"))
    folder = class_folders(root)
    with pytest.raises(ValueError, match=r"labels.csv, line 3: 'maybe' is not a yes/no"):
        folder.votes(root, ("e1", "e2", "e3"))
    short = _folder(tmp_path / "short", TABLE.replace("normal/4.png,s3,0,0,0", "normal/4.png,s3,0"))
    with pytest.raises(ValueError, match=r"labels.csv, line 7: '' is not a yes/no"):
        class_folders(short).votes(short, ("e1", "e2", "e3"))
    with pytest.raises(ValueError, match=r"labels.csv: no column e9"):
        folder.votes(root, ("e1", "e9"))


def test_soft_targets_are_what_the_model_learns(tmp_path: Path) -> None:
    """Squares voted positive by a quarter of the experts score near a quarter, not near 1."""
    images, labels = _squares(64)
    config = ClassifierTraining(
        width=4,
        input_size=16,
        epochs=12,
        batch_size=8,
        learning_rate=1e-2,
        hed_jitter=0.0,
        class_weights=False,
        patience=20,
        device="cpu",
        monitor="loss",
    )
    scores = {}
    for name, targets in (("hard", None), ("soft", np.where(labels == 1, 0.25, 0.0))):
        out = tmp_path / f"{name}.safetensors"
        train_classifier((images, labels, targets), (images, labels), out, config)
        model, card = load_checkpoint(out, task="classification")
        model.eval()
        scores[name] = ClassifierPredictor(model, card, "cpu", optimise=False)(images)
    assert scores["hard"][labels == 1].mean() > 0.8
    assert 0.1 < scores["soft"][labels == 1].mean() < 0.45
    assert scores["soft"][labels == 0].mean() < 0.1


def test_the_cli_trains_on_votes_and_records_them(tmp_path: Path, capsys) -> None:
    root = _folder(tmp_path / "data", TABLE)
    out = tmp_path / "m.safetensors"
    command = ["train-classifier", str(root), "--out", str(out), "--classes", "normal", "atypical"]
    tiny = ["--width", "4", "--epochs", "1", "--batch-size", "4", "--test-fraction", "0"]
    tiny += ["--val-fraction", "0.5"]
    assert main([*command, *tiny[:-2], "--device", "cpu"]) == 2  # 4 per class: 1/5 won't go
    assert f"{root} (--val-fraction): holding out 0.2 needs at least 5 images of each class" in (
        capsys.readouterr().err
    )
    assert main([*command, *tiny, "--label-votes", "e1", "e9", "--device", "cpu"]) == 2
    assert "labels.csv: no column e9" in capsys.readouterr().err and not out.exists()
    assert main([*command, *tiny, "--label-votes", "e1", "e2", "e3", "--device", "cpu"]) == 0
    assert read_card(out).training["label_votes"] == ["e1", "e2", "e3"]
    slides = ["train-classifier", str(tmp_path / "s.tif"), "--annotations", str(tmp_path)]
    assert main([*slides, "--out", str(tmp_path / "s.safetensors"), "--label-votes", "e1"]) == 2
    assert "--label-votes reads a class folder's labels.csv" in capsys.readouterr().err


def test_cosine_schedule_halves_midway_and_ends_at_zero() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([parameter], lr=0.01)
    scheduler = _scheduler(optimiser, ClassifierTraining(epochs=10, schedule="cosine"))
    rates = []
    for _ in range(10):
        optimiser.step()
        scheduler.step()
        rates.append(optimiser.param_groups[0]["lr"])
    assert rates[4] == pytest.approx(0.005) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert _scheduler(optimiser, ClassifierTraining()) is None  # constant by default


def test_training_follows_the_schedule_and_logs_each_epochs_rate(tmp_path: Path) -> None:
    images, labels = _squares(16)
    rates = {}
    for schedule in ("constant", "cosine"):
        config = ClassifierTraining(
            width=4, input_size=16, epochs=4, patience=10, batch_size=8, learning_rate=0.01,
            hed_jitter=0.0, device="cpu", schedule=schedule,
        )  # fmt: skip
        out = tmp_path / f"{schedule}.safetensors"
        report = train_classifier((images, labels), (images, labels), out, config)
        rates[schedule] = [row["lr"] for row in report.history]
        log = out.with_suffix(".csv").read_text().splitlines()
        assert "lr" in log[0].split(",") and len(log) == 5
    assert rates["constant"] == [0.01] * 4
    assert rates["cosine"] == pytest.approx(
        [0.01, 0.01 * (1 + 2**-0.5) / 2, 0.005, 0.01 * (1 - 2**-0.5) / 2]
    )


def test_an_unknown_schedule_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    images, labels = _squares(8)
    out = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="schedule must be 'constant' or 'cosine'"):
        train_classifier(
            (images, labels), (images, labels), out, ClassifierTraining(schedule="step")
        )
    assert not out.exists()
