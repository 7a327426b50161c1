"""Given a trained model, when it is prepared for prediction, it gives the same outputs
(batch norm folded into its convolutions, channels-last) and the original is untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from napari_mitosis.classification.run import ClassifierPredictor
from napari_mitosis.models.checkpoint import ModelCard, build_model
from napari_mitosis.models.inference_model import for_inference
from napari_mitosis.models.unet import unet


def _with_running_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms with non-trivial statistics, as after training (fresh ones are identity)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.2)
    return model.eval()


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    ("model", "shape"),
    [
        (
            lambda: build_model(ModelCard("small_cnn", {"outputs": 1}, input_size=48)),
            (4, 3, 48, 48),
        ),
        (
            lambda: build_model(ModelCard("two_tower", {"outputs": 1}, input_size=48)),
            (4, 6, 48, 48),
        ),
        (lambda: unet(base_width=4, depth=2), (2, 3, 32, 48)),
    ],
    ids=["small_cnn", "two_tower", "unet"],
)
def test_folded_model_gives_the_same_outputs(model, shape) -> None:
    torch.manual_seed(0)
    original = _with_running_stats(model())
    before = {k: v.clone() for k, v in original.state_dict().items()}
    ready = for_inference(original)
    assert _batch_norms(original) > 0 and _batch_norms(ready) == 0  # every pair folded
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = original(x)
        got = ready(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    # the caller's model is not changed (training can go on with it)
    assert all(torch.equal(before[k], v) for k, v in original.state_dict().items())
    assert _batch_norms(original) == len([k for k in before if k.endswith("running_var")])


def test_unet_keeps_its_size_check_after_tracing() -> None:
    ready = for_inference(unet(base_width=4, depth=2))
    with pytest.raises(ValueError, match="divisible by 4"):
        ready(torch.zeros(1, 3, 30, 32))


class DataDependent(nn.Module):
    """torch.fx cannot trace Python branches on tensor values."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y if y.mean() > 0 else -y


def test_untraceable_models_run_unfused_with_the_same_outputs() -> None:
    original = _with_running_stats(DataDependent())
    ready = for_inference(original)
    assert _batch_norms(ready) == 1 and ready is not original
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(ready(x), original(x))


def test_training_predictor_follows_the_live_model() -> None:
    """Training scores each epoch with the model being trained, never a frozen copy."""
    card = ModelCard("small_cnn", {"outputs": 1}, input_size=32, classes=("a", "b"))
    model = build_model(card)
    live = ClassifierPredictor(model, card, "cpu", optimise=False)
    frozen = ClassifierPredictor(model, card, "cpu")
    assert live.model is model and frozen.model is not model
    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(live(images), frozen(images), rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        model.fc.bias += 5.0  # a training step
    assert (live(images) > frozen(images)).all()


class Twin(nn.Module):
    """Two equal convolutions subtracted: 0 in float32, inf − inf = NaN in float16."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 1, 3), nn.Conv2d(3, 1, 3)
        with torch.no_grad():
            for conv in (self.a, self.b):
                conv.weight.fill_(1e4)
                conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.a(x) - self.b(x)).amax((2, 3))


def test_a_batch_that_overflows_float16_is_run_again_in_float32() -> None:
    card = ModelCard("small_cnn", {"outputs": 1}, input_size=16, classes=("normal", "tumour"))
    predictor = ClassifierPredictor(Twin(), card, "cpu", optimise=False)
    predictor.amp = True  # CUDA's float16 autocast, here on the CPU
    tiles = np.full((2, 16, 16, 3), 255, np.uint8)
    with pytest.warns(RuntimeWarning, match="overflowed float16"):
        probability = predictor(tiles)
    np.testing.assert_array_equal(probability, [0.5, 0.5])  # sigmoid(0), never NaN
