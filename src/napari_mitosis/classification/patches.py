"""What a classifier reads: a patch centred on each grid cell (with an optional context
patch from a coarser level), padded with white past the slide's edge; whole images
cropped and resized to the model's input."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_mitosis.io.class_folders import resize_rgb


def read_window(source: Any, y0: int, x0: int, size: int, fill: int = 255) -> np.ndarray:
    """``size``² pixels from ``(y0, x0)``; outside the image is ``fill`` (glass white)."""
    height, width = source.shape[:2]
    channels = source.shape[2:]
    ya, xa, yb, xb = max(y0, 0), max(x0, 0), min(y0 + size, height), min(x0 + size, width)
    if (ya, xa, yb, xb) == (y0, x0, y0 + size, x0 + size):  # inside: no fill, no second copy
        inside = np.asarray(source[ya:yb, xa:xb])
        if inside.dtype == np.uint8:
            return inside
    out = np.full((size, size, *channels), fill, np.uint8)
    if ya < yb and xa < xb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = np.asarray(source[ya:yb, xa:xb])
    return out


class PatchReader:
    """Model input for the cell at (y, x): the patch centred on it, and, for two-tower
    models, the context patch read from a coarser level (``context_scale`` = its pixels
    per model-level pixel) and resized to the patch size. Channels: patch, then context.
    Past the slide's edge a patch is ``fill``: glass white, or black for WSInfer models
    (WSInfer's OpenSlide reads there are transparent, which its RGB conversion makes black)."""

    def __init__(
        self,
        source: Any,
        *,
        patch: int,
        cell: int,
        context: float | None = None,
        context_source: Any = None,
        context_scale: float = 1.0,
        fill: int = 255,
    ) -> None:
        self.source, self.patch, self.cell, self.fill = source, patch, cell, fill
        self.context = context
        self.context_source = source if context_source is None else context_source
        self.context_scale = context_scale if context_source is not None else 1.0

    def __call__(self, y: int, x: int) -> np.ndarray:
        cy, cx = y + self.cell / 2, x + self.cell / 2
        half = self.patch / 2
        patch = read_window(self.source, round(cy - half), round(cx - half), self.patch, self.fill)
        if not self.context:
            return patch
        size = max(1, round(self.patch * self.context * self.context_scale))
        y0 = round(cy * self.context_scale - size / 2)
        x0 = round(cx * self.context_scale - size / 2)
        context = resize_rgb(read_window(self.context_source, y0, x0, size), self.patch)
        return np.concatenate([patch, context], axis=2)


def context_level(
    slide: Any, level: int, factor: float | None, *, base: float | None = None
) -> tuple[Any, float]:
    """The coarsest pyramid level at most ``factor`` × coarser than the patches' pixels
    (``level``'s, or ``base`` × level 0's when they were resampled), and its pixels per
    patch pixel (the context patch is read there, then resized)."""
    if not factor:
        return None, 1.0
    base = slide.level_downsample(level)[1] if base is None else base
    best = level
    for index in range(level, len(slide.sources)):
        if slide.level_downsample(index)[1] / base <= factor * 1.01:
            best = index
    return slide.sources[best], base / slide.level_downsample(best)[1]
