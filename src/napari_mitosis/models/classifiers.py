"""Patch classifiers (torchvision architectures, built without downloaded weights).

Every factory returns a module mapping (N, C, H, W) normalised input to (N, outputs)
logits: one output (sigmoid) for two classes, as in Liu et al. 2017, or one per class
(softmax) for more. ``two_tower`` takes 2 × C channels: the patch, then a same-size patch
centred on it at a lower magnification (`classification.patches.PatchReader` stacks them).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Tower = Literal["small_cnn", "wide_resnet", "inception_v3"]


def outputs_for(classes: int) -> int:
    """Logits a classifier needs for ``classes`` classes (one sigmoid output for two)."""
    return 1 if classes == 2 else classes


def inception_v3_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    """Inception-v3 (299 px input) with global max pooling, as in the Camelyon16 articles."""
    if in_channels != 3:
        raise ValueError("inception_v3 takes RGB input (in_channels=3)")
    from torchvision.models import inception_v3  # on use: torchvision is slow to import

    model = inception_v3(weights=None, aux_logits=False, init_weights=True)
    model.avgpool = nn.AdaptiveMaxPool2d(1)
    model.fc = nn.Linear(model.fc.in_features, outputs)
    return model


def wide_resnet_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    """WideResNet-50-2; any input size ≥ 32 px."""
    from torchvision.models import wide_resnet50_2  # on use: torchvision is slow to import

    model = wide_resnet50_2(weights=None)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    model.fc = nn.Linear(model.fc.in_features, outputs)
    return model


class SmallCNN(nn.Module):
    """``depth`` conv blocks (four by default), each but the last halving the image, and
    global average pooling: small greyscale or RGB images (50×50 IDC patches, ultrasound
    frames) and quick CPU tests. Four blocks see 38 px; each more block doubles
    that, so a 128 px image whose class is a shape (a lesion's margin) wants six."""

    def __init__(
        self, *, outputs: int = 1, in_channels: int = 3, width: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"small_cnn needs at least one block, got depth {depth}")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            out = width * 2 ** min(i, 2)
            layers += [
                nn.Conv2d(channels, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2) if i < depth - 1 else nn.Identity(),
            ]
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_size = channels
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(channels, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


def small_cnn(
    *, outputs: int = 1, in_channels: int = 3, width: int = 32, depth: int = 4
) -> nn.Module:
    return SmallCNN(outputs=outputs, in_channels=in_channels, width=width, depth=depth)


def _tower(kind: Tower, in_channels: int, width: int) -> tuple[nn.Module, int]:
    """A classifier without its last layer: (feature extractor, feature size)."""
    if kind == "small_cnn":
        model = SmallCNN(in_channels=in_channels, width=width)
        return model.features, model.feature_size
    if kind == "wide_resnet":
        model = wide_resnet_classifier(in_channels=in_channels)
    elif kind == "inception_v3":
        model = inception_v3_classifier(in_channels=in_channels)
    else:
        raise ValueError(f"unknown tower {kind!r}; choose small_cnn, wide_resnet or inception_v3")
    size = model.fc.in_features
    model.fc = nn.Identity()
    return model, size


class TwoTower(nn.Module):
    """Two towers with their own weights — the patch and its lower-magnification context —
    whose features are concatenated before one linear layer (multi-scale, as in Liu et al.)."""

    def __init__(
        self, *, tower: Tower = "small_cnn", outputs: int = 1, in_channels: int = 3, width: int = 32
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch, size = _tower(tower, in_channels, width)
        self.context, _ = _tower(tower, in_channels, width)
        self.fc = nn.Linear(2 * size, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch, context = x[:, : self.in_channels], x[:, self.in_channels :]
        return self.fc(torch.cat([self.patch(patch), self.context(context)], dim=1))


def two_tower(
    *, tower: Tower = "small_cnn", outputs: int = 1, in_channels: int = 3, width: int = 32
) -> nn.Module:
    return TwoTower(tower=tower, outputs=outputs, in_channels=in_channels, width=width)


class Ensemble(nn.Module):
    """Members of one architecture whose logits are averaged: the output has a member's
    shape, so every predictor, export and server runs an ensemble as it runs one model.

    Averaging logits (not probabilities) keeps the module a plain classifier; the AUC of
    the two means differs little, and cross-validation chooses the threshold on it.
    ``calibrated``: each member's logit is first scaled and shifted (``calibration``, one
    (scale, shift) row per member, fitted on its own out-of-fold images), so members
    early-stopped at different epochs, some more confident than others, count alike and
    their out-of-fold scores share one scale for the threshold."""

    calibration: torch.Tensor | None

    def __init__(self, members: list[nn.Module], *, calibrated: bool = False) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        if calibrated:
            self.register_buffer("calibration", torch.tensor([[1.0, 0.0]] * len(members)))
        else:
            self.calibration = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members])
        if self.calibration is not None:
            scale, shift = self.calibration[:, :1, None], self.calibration[:, 1:, None]
            logits = logits * scale + shift
        return logits.mean(0)


CLASSIFIERS = {
    "inception_v3": inception_v3_classifier,
    "wide_resnet": wide_resnet_classifier,
    "small_cnn": small_cnn,
    "two_tower": two_tower,
}
