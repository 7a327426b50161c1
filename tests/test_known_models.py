"""Published models by name: a copy the user has is imported as its publisher's model
(weights read without running code, the publisher's card, licence and provenance); by
name, offline, the error says where to get it and what to run instead."""

from __future__ import annotations

import collections
import dataclasses
import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mitosis.cli import main
from napari_mitosis.detection.run import detect_array
from napari_mitosis.models import known
from napari_mitosis.models.checkpoint import load_checkpoint
from napari_mitosis.models.detector import DetectionPredictor
from napari_mitosis.models.one_stage import fcos
from napari_mitosis.models.registry import ModelRegistry, file_sha256

SMALL = {"backbone": "resnet18", "tile": 128, "score_threshold": 0.0, "nms_threshold": 0.3}


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def small_fcos_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """midog25-fcos with a ResNet-18 card (the real one is a 350 MB ResNeXt-101), and a
    registry of the test's own."""
    card = dataclasses.replace(known.MIDOG25_FCOS.card, options=SMALL, input_size=128)
    monkeypatch.setitem(
        known.PUBLISHED, "midog25-fcos", dataclasses.replace(known.MIDOG25_FCOS, card=card)
    )
    monkeypatch.setenv("NAPARI_MITOSIS_MODELS", str(tmp_path / "registry"))
    return card


def _lightning_checkpoint(path: Path, network: torch.nn.Module, marker: Path) -> Path:
    state = collections.OrderedDict((f"model.{k}", v) for k, v in network.state_dict().items())
    torch.save({"state_dict": state, "callbacks": {"x": _RunsCode(marker)}, "epoch": 9}, path)
    return path


def test_a_publishers_checkpoint_imports_as_its_model_and_runs_as_its_own_forward_pass(
    small_fcos_entry, tmp_path: Path, capsys
) -> None:
    torch.manual_seed(0)
    network = fcos(**SMALL).eval()
    marker = tmp_path / "code-ran"
    ckpt = _lightning_checkpoint(tmp_path / "FCOS_x101.ckpt", network, marker)
    assert main(["models", "import", str(ckpt), "--as", "midog25-fcos"]) == 0
    assert "registered midog25-fcos: detection" in capsys.readouterr().out
    assert not marker.exists()
    entry = ModelRegistry().get("midog25-fcos")
    assert entry.licence == known.MIDOG25_FCOS.licence and "MIDOG 2025" in entry.provenance
    assert entry.extra["publisher_sha256"] == file_sha256(ckpt)
    model, card = load_checkpoint("midog25-fcos", task="detection")
    assert card.threshold == 0.548 and card.mpp == 0.25 and card.mpp_tolerance == 0.2
    image = np.random.default_rng(1).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    found = detect_array(
        image, DetectionPredictor(model, card, "cpu"), overlap=0, score_threshold=0
    )
    with torch.inference_mode():
        (own,) = network([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    np.testing.assert_allclose(np.sort(found.scores), np.sort(own["scores"].numpy()), atol=1e-5)


def test_a_checkpoint_of_another_model_is_refused_by_name(small_fcos_entry, tmp_path: Path, capsys):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    ckpt = _lightning_checkpoint(tmp_path / "other.ckpt", other, tmp_path / "m")
    assert main(["models", "import", str(ckpt), "--as", "midog25-fcos"]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt}: not a midog25-fcos checkpoint" in err and "weights are missing" in err
    assert ModelRegistry().names() == []


def test_by_name_offline_the_error_names_the_address_and_the_way_around(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys
) -> None:
    monkeypatch.setenv("NAPARI_MITOSIS_MODELS", str(tmp_path / "registry"))

    def offline(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(known.urllib.request, "urlopen", offline)
    assert main(["models", "import", "midog25-fcos"]) == 2
    err = capsys.readouterr().err
    assert known.MIDOG25_FCOS.url in err and "models import FILE --as midog25-fcos" in err
    assert not list((tmp_path / "registry" / ".downloads").glob("*"))  # nothing half-written


def test_a_downloaded_file_that_changed_since_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    (folder / "FCOS_x101.ckpt").write_bytes(b"changed")
    (folder / "FCOS_x101.ckpt.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(ValueError, match="not the one recorded when it was downloaded"):
        known.download(known.MIDOG25_FCOS, folder)
