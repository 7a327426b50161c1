"""Given pretrained weights (a local file, or a torchvision name), a classifier starts from
them, its card says so, fine-tuning can keep the backbone frozen, and nothing downloads."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_mitosis.classification.training import ClassifierTraining, train_classifier
from napari_mitosis.models.checkpoint import load_checkpoint
from napari_mitosis.models.pretrained import (
    IMAGENET_MEAN,
    backbone_classifier,
    load_pretrained,
)
from napari_mitosis.samples.synthetic import synthetic_slide


def _weights_file(tmp_path: Path, suffix: str) -> Path:
    """A state dict of an untrained torchvision ResNet-18 (what a user's file would hold)."""
    import torchvision

    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_classifier_fine_tunes_from_a_local_weights_file(tmp_path: Path, suffix: str) -> None:
    weights = _weights_file(tmp_path, suffix)
    images = np.stack([synthetic_slide(48, 48, seed=s)[0] for s in range(12)])
    labels = np.arange(12) % 2
    config = ClassifierTraining(
        architecture="resnet18",
        input_size=48,
        epochs=1,
        batch_size=6,
        device="cpu",
        pretrained=str(weights),
        freeze_epochs=1,
        hed_jitter=0,
    )
    out = tmp_path / "c.safetensors"
    train_classifier((images, labels), (images, labels), out, config)
    model, card = load_checkpoint(out, task="classification")
    record = card.training["pretrained_weights"]
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["loaded"] == record["of"] - 2  # everything but the new last layer
    assert card.mean == IMAGENET_MEAN
    source = torch.load(weights, weights_only=True) if suffix == ".pth" else None
    if source is None:
        from safetensors.torch import load_file

        source = load_file(str(weights))
    # The backbone was frozen for the one epoch: its weights are the file's, exactly.
    torch.testing.assert_close(model.conv1.weight, source["conv1.weight"])
    torch.testing.assert_close(model.layer4[1].conv2.weight, source["layer4.1.conv2.weight"])


def test_files_that_would_run_code_or_fit_nothing_are_refused(tmp_path: Path) -> None:
    model = backbone_classifier(backbone="resnet18")
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"weights": object()}))
    with pytest.raises(ValueError, match=r"evil\.pt: not a state dict of tensors"):
        load_pretrained(model, evil)
    alien = tmp_path / "alien.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, alien)
    with pytest.raises(ValueError, match=r"alien\.pt: none of its tensors fits a ResNet"):
        load_pretrained(model, alien)


def test_a_torchvision_name_that_cannot_download_says_where_to_put_the_file(
    monkeypatch, tmp_path: Path
) -> None:
    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):  # no network in tests: what a closed machine says
        raise OSError("network is unreachable")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    model = backbone_classifier(backbone="resnet18")
    with pytest.raises(ValueError, match=r"could not be downloaded.*hub/checkpoints/resnet18"):
        load_pretrained(model, "ResNet18_Weights.IMAGENET1K_V1")
    with pytest.raises(ValueError, match="neither a file nor a torchvision weights name"):
        load_pretrained(model, "NoSuch_Weights.V9")


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "efficientnet_b0", "convnext_tiny"])
def test_every_backbone_gives_one_logit_per_image(name: str) -> None:
    model = backbone_classifier(backbone=name, outputs=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1)


def test_a_unet_encoder_starts_from_a_resnet_weights_file(tmp_path: Path) -> None:
    """`train-unet --encoder resnet18 --pretrained FILE`: the encoder holds the file's
    weights (frozen for the first steps, then learning 10× slower than the decoder), the
    card records them, and the saved model segments through the engine's own padding."""
    from napari_mitosis.segmentation.training import UNetTraining, predict_image, train_unet

    weights = _weights_file(tmp_path, ".safetensors")
    rng = np.random.default_rng(0)
    pairs = []
    for seed in range(3):
        image = synthetic_slide(64, 64, seed=seed)[0]
        mask = np.zeros((64, 64), bool)
        mask[rng.integers(8, 40) :, :][:12, 20:32] = True
        pairs.append((image, mask))
    config = UNetTraining(
        crop=64,
        batch_size=2,
        max_steps=2,
        eval_every=2,
        encoder="resnet18",
        pretrained=str(weights),
        freeze_encoder_steps=2,
        encoder_lr_scale=0.1,
        hed_jitter=0,
        device="cpu",
    )
    out = tmp_path / "u.safetensors"
    report = train_unet(pairs[:2], pairs[2:], out, config)
    model, card = load_checkpoint(out, task="segmentation")
    assert card.architecture == "resnet_unet" and card.options["depth"] == 5
    record = card.training["pretrained_weights"]
    assert record["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["loaded"] == record["of"]  # every encoder tensor (its fc is gone)
    assert card.mean == IMAGENET_MEAN
    from safetensors.torch import load_file

    source = load_file(str(weights))
    torch.testing.assert_close(model.encoder.conv1.weight, source["conv1.weight"])
    torch.testing.assert_close(
        model.encoder.layer3[0].conv1.weight, source["layer3.0.conv1.weight"]
    )
    assert report.history and 0.0 <= report.best_dice <= 1.0
    odd = synthetic_slide(70, 90, seed=9)[0]  # not a multiple of 32: padded, then cut back
    assert predict_image(model.eval(), odd, card, torch.device("cpu")).shape == (70, 90)


def test_discriminative_learning_rates_put_the_last_layer_apart() -> None:
    from napari_mitosis.models.pretrained import parameter_groups
    from napari_mitosis.models.unet import resnet_unet
    from napari_mitosis.segmentation.training import UNetTraining, _parameter_groups

    model = backbone_classifier(backbone="resnet18", outputs=2)
    body, head = parameter_groups(model, 1e-3, 0.1)
    assert body["lr"] == pytest.approx(1e-4) and head["lr"] == 1e-3
    assert [p.shape for p in head["params"]] == [(2, 512), (2,)]
    assert len(body["params"]) + 2 == len(list(model.parameters()))
    assert len(parameter_groups(model, 1e-3, 1.0)) == 1
    unet = resnet_unet(encoder="resnet18")
    config = UNetTraining(encoder="resnet18", encoder_lr_scale=0.1, learning_rate=1e-3)
    encoder, decoder = _parameter_groups(unet, config)
    assert encoder["lr"] == pytest.approx(1e-4) and decoder["lr"] == 1e-3
    assert {id(p) for p in encoder["params"]} == {id(p) for p in unet.encoder.parameters()}
    with pytest.raises(ValueError, match="need a ResNet encoder"):
        from napari_mitosis.segmentation.training import _model_and_card

        _model_and_card(UNetTraining(pretrained="x.pth"), 3)
