"""A user who asks for a moving average of the weights (``--ema``) gets that average
validated and saved, warmed up so the random start does not linger, batch-norm statistics
included; a decay that is not one is refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import napari_mitosis.classification.training as training
from conftest import bright_squares
from napari_mitosis.classification.training import ClassifierTraining, _averaged, train_classifier
from napari_mitosis.cli import main
from napari_mitosis.models.checkpoint import load_checkpoint, read_card


def _squares(n: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return bright_squares(n, seed)


def test_the_average_is_warmed_up_then_follows_the_decay() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(1, 1, bias=False), torch.nn.BatchNorm1d(1))
    averaged = _averaged(model, 0.5)
    assert averaged is not None
    weight, stats = model[0].weight, model[1].running_mean
    expected_w = expected_m = 0.0
    for step, value in enumerate([2.0, 4.0, 8.0, 16.0]):
        with torch.no_grad():
            weight.fill_(value)
            stats.fill_(-value)
        averaged.update_parameters(model)
        if step:  # the first update copies; then min(0.5, (1+t)/(10+t)) of the old
            decay = min(0.5, (1 + step) / (10 + step))
            expected_w = decay * expected_w + (1 - decay) * value
            expected_m = decay * expected_m + (1 - decay) * -value
        else:  # the start is copied
            expected_w, expected_m = value, -value
        assert float(averaged.module[0].weight) == pytest.approx(expected_w)
        assert float(averaged.module[1].running_mean) == pytest.approx(expected_m)
    # by hand: 2, then 4 at 2/11, 8 at 3/12, 16 at 4/13 of the old value kept
    assert expected_w == pytest.approx(
        4 / 13 * (3 / 12 * (2 / 11 * 2 + 9 / 11 * 4) + 9 / 12 * 8) + 9 / 13 * 16
    )
    assert _averaged(model, 0.0) is None


def test_the_saved_weights_are_the_average_not_the_last_step(tmp_path: Path, monkeypatch) -> None:
    images, labels = _squares()
    made = []
    real = training._averaged
    monkeypatch.setattr(training, "_averaged", lambda m, d: made.append(real(m, d)) or made[-1])
    config = dict(width=4, input_size=16, epochs=1, batch_size=4, learning_rate=0.05,
                  hed_jitter=0.0, device="cpu")  # fmt: skip
    saved = {}
    for ema in (0.0, 0.9):
        out = tmp_path / f"ema{ema}.safetensors"
        train_classifier(
            (images, labels), (images, labels), out, ClassifierTraining(**config, ema=ema)
        )
        saved[ema] = load_checkpoint(out, task="classification")[0].state_dict()
    average = made[-1].module.state_dict()
    assert made[0] is None and all(torch.equal(saved[0.9][k], average[k]) for k in saved[0.9])
    # the same steps were taken without the average: its weights are the last step's
    assert not torch.allclose(saved[0.9]["fc.weight"], saved[0.0]["fc.weight"])


def test_the_cli_records_the_decay_and_refuses_a_bad_one(tmp_path: Path, capsys) -> None:
    from PIL import Image

    images, labels = _squares(12)
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        name = tmp_path / "data" / ("a", "b")[label] / f"{i}.png"
        name.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(name)
    common = [
        "train-classifier", str(tmp_path / "data"), "--width", "4", "--epochs", "1",
        "--test-fraction", "0", "--val-fraction", "0.34", "--device", "cpu",
    ]  # fmt: skip
    out = tmp_path / "m.safetensors"
    assert main([*common, "--out", str(out), "--ema", "1.5"]) == 2
    assert "ema must be 0 (off) or a decay between 0 and 1, got 1.5" in capsys.readouterr().err
    assert not out.exists()
    assert main([*common, "--out", str(out), "--ema", "0.95"]) == 0
    assert read_card(out).training["ema"] == 0.95
