"""U-Net for mitosis segmentation: a plain ``nn.Module`` built by a small factory.

Ronneberger et al. 2015 with batch norm and padded convolutions (output size = input size
for inputs divisible by 2**depth). No training code lives here.
"""

from __future__ import annotations

import torch
import torch.fx
from torch import nn


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def check_divisible(x: torch.Tensor, depth: int) -> None:
    """Inputs must halve ``depth`` times evenly (a plain function that torch.fx keeps as a
    call, so the U-Net stays traceable for `inference_model.for_inference`)."""
    factor = 2**depth
    if x.shape[-1] % factor or x.shape[-2] % factor:
        raise ValueError(
            f"U-Net of depth {depth} needs H and W divisible by {factor}, got {tuple(x.shape[-2:])}"
        )


torch.fx.wrap("check_divisible")


class UNet(nn.Module):
    """Encoder–decoder with skip connections; returns logits (N, out_channels, H, W)."""

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, base_width: int = 32, depth: int = 4
    ) -> None:
        super().__init__()
        if depth < 1 or base_width < 1:
            raise ValueError(f"depth and base_width must be ≥ 1, got {depth}, {base_width}")
        self.depth = depth
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0])])
        self.down.extend(_double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
            for i in reversed(range(depth))
        )
        self.merge = nn.ModuleList(
            _double_conv(widths[i] * 2, widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)


def unet(
    *, in_channels: int = 3, out_channels: int = 1, base_width: int = 32, depth: int = 4
) -> UNet:
    """The default (32, depth 4) has ~7.8 M parameters."""
    return UNet(in_channels, out_channels, base_width, depth)


#: encoder → channels of its five feature maps (strides 2, 4, 8, 16, 32)
ENCODERS: dict[str, tuple[int, ...]] = {
    "resnet18": (64, 64, 128, 256, 512),
    "resnet34": (64, 64, 128, 256, 512),
    "resnet50": (64, 256, 512, 1024, 2048),
}


class _Up(nn.Module):
    """Upsample ×2, concatenate the skip (if any), two convolutions."""

    def __init__(self, in_channels: int, skip: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = _double_conv(in_channels + skip, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([x, skip], dim=1))


class ResNetUNet(nn.Module):
    """A U-Net whose encoder is a torchvision ResNet, so that ImageNet (or any ResNet
    classification) weights can start it: ``encoder`` keeps torchvision's parameter names,
    which is what `pretrained.load_pretrained` matches. Inputs must be divisible by 32."""

    depth = 5

    def __init__(
        self, encoder: str = "resnet34", in_channels: int = 3, out_channels: int = 1
    ) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose {sorted(ENCODERS)}")
        import torchvision.models as tvm  # on use: torchvision is slow to import

        self.encoder = getattr(tvm, encoder)(weights=None)
        del self.encoder.fc  # the encoder ends at layer4: no pooling, no classifier
        if in_channels != 3:
            self.encoder.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        skips = ENCODERS[encoder]
        decoder = (256, 128, 64, 32, 16)
        ins = (skips[4], *decoder[:-1])
        outs = (*skips[3::-1], 0)
        self.decoder = nn.ModuleList(
            _Up(i, s, o) for i, s, o in zip(ins, outs, decoder, strict=True)
        )
        self.head = nn.Conv2d(decoder[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_divisible(x, self.depth)
        e = self.encoder
        stem = e.relu(e.bn1(e.conv1(x)))  # stride 2
        f1 = e.layer1(e.maxpool(stem))  # 4
        f2 = e.layer2(f1)  # 8
        f3 = e.layer3(f2)  # 16
        x = e.layer4(f3)  # 32
        for block, skip in zip(self.decoder, (f3, f2, f1, stem, None), strict=True):
            x = block(x, skip)
        return self.head(x)


def resnet_unet(
    *, encoder: str = "resnet34", in_channels: int = 3, out_channels: int = 1, depth: int = 5
) -> ResNetUNet:
    """``depth`` is always 5 (the card records it, so inputs are padded to 32)."""
    if depth != ResNetUNet.depth:
        raise ValueError(f"a ResNet encoder halves the input 5 times, not {depth}")
    return ResNetUNet(encoder, in_channels, out_channels)
