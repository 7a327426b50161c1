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
