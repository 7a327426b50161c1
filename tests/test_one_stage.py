"""FCOS and RetinaNet detectors run through the one tiled engine from our checkpoints,
and a Lightning checkpoint's weights load into them key for key without running code."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mitosis.detection.run import detect_array
from napari_mitosis.models.card import ModelCard
from napari_mitosis.models.checkpoint import load_checkpoint, save_checkpoint
from napari_mitosis.models.detector import DetectionPredictor
from napari_mitosis.models.inert_pickle import checkpoint_state_dict
from napari_mitosis.models.one_stage import fcos, retinanet


@pytest.mark.parametrize("architecture", ["fcos", "retinanet"])
def test_a_one_stage_detector_runs_through_the_engine_as_its_own_forward_pass(
    architecture: str, tmp_path: Path
) -> None:
    # The merger's NMS (IoU 0.3) on one tile keeps what the model's own NMS at 0.3 kept.
    options = {"backbone": "resnet18", "tile": 128, "score_threshold": 0.0, "nms_threshold": 0.3}
    torch.manual_seed(0)
    model = (fcos if architecture == "fcos" else retinanet)(**options).eval()
    card = ModelCard(
        architecture, options, task="detection", input_size=128, mpp=0.25,
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), classes=("background", "mitotic figure"),
        threshold=0.0,
    )  # fmt: skip
    path = save_checkpoint(tmp_path / f"{architecture}.safetensors", model, card)
    loaded, card = load_checkpoint(path, task="detection")
    image = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    found = detect_array(image, DetectionPredictor(loaded, card, "cpu"), overlap=0)
    with torch.inference_mode():  # one tile: the engine's boxes are the model's own
        (own,) = model([torch.from_numpy(image).permute(2, 0, 1).float() / 255])
    assert len(found) == len(own["boxes"]) > 0
    order = np.argsort(-found.scores)
    np.testing.assert_allclose(found.scores[order], own["scores"].numpy(), atol=1e-5)
    np.testing.assert_allclose(found.boxes[order], own["boxes"].numpy(), atol=1e-3)
    # MIDOG's "mitotic figure" is an unreviewed "Mitosis candidate"; untrained one-stage
    # heads also score index 0, which torchvision's FCOS keeps as a label of its own.
    assert "Mitosis candidate" in found.classes
    assert set(found.classes) <= {"Mitosis candidate", "Background"}


def test_lightning_weights_load_into_fcos_key_for_key(tmp_path: Path) -> None:
    trained = fcos(backbone="resnet18", tile=256)
    state = collections.OrderedDict((f"model.{k}", v) for k, v in trained.state_dict().items())
    torch.save({"state_dict": state, "hyper_parameters": {"lr": 1e-4}}, tmp_path / "x.ckpt")
    fresh = fcos(backbone="resnet18", tile=256)
    fresh.load_state_dict(checkpoint_state_dict(tmp_path / "x.ckpt"), strict=True)
    for name, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


def test_an_unknown_backbone_is_named() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg11'"):
        fcos(backbone="vgg11")
