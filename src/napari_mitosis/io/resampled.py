"""A slide level read at another µm/pixel: what a model sees when no level matches it.

A model trained at 0.25 µm/px that meets a 20× slide (0.5 µm/px, one level) must see its
tissue at its own scale, or every figure is half the size it learned. `ResampledLevel`
wraps a level's direct source and serves any region of a virtual level ``factor`` times
coarser (``factor`` < 1: finer, i.e. upsampled), resizing with Pillow from the source
pixels under it — area averaging down (as OpenCV's INTER_AREA, which TIAToolbox uses for
downsampling), bicubic up (its INTER_CUBIC). Reads cost only the source pixels beneath the
region and a margin, so the tiled engines stream it as any level.

Coordinates stay exact: resampled pixel edge ``i`` lies at source pixel edge ``i × factor``
(Pillow's ``box`` takes fractional source edges), so level-0 positions are resampled ones
× the level's downsample × ``factor`` — the ``downsample`` every tiled run already applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

#: Source pixels read beyond a region's edges, for the resizing filter's support.
MARGIN_PX = 4


class ResampledLevel:
    """``source`` (an array-like ``(y, x[, c])`` uint8) as seen ``factor`` × coarser.

    Indexable like a level: ``[y0:y1, x0:x1]`` in resampled pixels, cut at the edges as
    NumPy cuts. Picklable when the source is (Dask workers reopen the slide)."""

    def __init__(self, source: Any, factor: float) -> None:
        if not factor > 0:
            raise ValueError(f"a resampling factor must be positive, got {factor}")
        self.source, self.factor = source, float(factor)
        height, width = int(source.shape[0]), int(source.shape[1])
        self.shape = (
            max(1, round(height / self.factor)),
            max(1, round(width / self.factor)),
            *tuple(source.shape[2:]),
        )
        self.dtype = np.dtype(getattr(source, "dtype", np.uint8))
        self.ndim = len(self.shape)

    @property
    def upsampled(self) -> bool:
        return self.factor < 1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        pixels = self[:, :]
        return pixels if dtype is None else pixels.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) < 2 or not all(isinstance(k, slice) for k in key[:2]):
            raise IndexError("a resampled level is read by [y0:y1, x0:x1] slices")
        (y0, y1, sy), (x0, x1, sx) = (
            key[0].indices(self.shape[0]),
            key[1].indices(self.shape[1]),
        )
        if sy != 1 or sx != 1:
            raise IndexError("a resampled level is read with step 1")
        height, width = max(0, y1 - y0), max(0, x1 - x0)
        if height == 0 or width == 0:
            return np.zeros((height, width, *self.shape[2:]), self.dtype)[(..., *key[2:])]
        pixels = self._read(y0, x0, height, width)
        return pixels[(slice(None), slice(None), *key[2:])] if len(key) > 2 else pixels

    def _read(self, y0: int, x0: int, height: int, width: int) -> np.ndarray:
        f = self.factor
        top, left, bottom, right = y0 * f, x0 * f, (y0 + height) * f, (x0 + width) * f
        src_h, src_w = int(self.source.shape[0]), int(self.source.shape[1])
        ry0 = max(0, math.floor(top) - MARGIN_PX)
        rx0 = max(0, math.floor(left) - MARGIN_PX)
        ry1 = min(src_h, math.ceil(bottom) + MARGIN_PX)
        rx1 = min(src_w, math.ceil(right) + MARGIN_PX)
        block = np.asarray(self.source[ry0:ry1, rx0:rx1])
        # the last resampled row/column may reach past the source by under a pixel:
        # repeat the edge, as the filter would clamp it
        below, beyond = math.ceil(bottom) - ry1, math.ceil(right) - rx1
        if below > 0 or beyond > 0:
            pad = [(0, max(below, 0)), (0, max(beyond, 0))] + [(0, 0)] * (block.ndim - 2)
            block = np.pad(block, pad, mode="edge")
        block = np.ascontiguousarray(block)
        box = (left - rx0, top - ry0, right - rx0, bottom - ry0)
        method = Image.Resampling.BICUBIC if f < 1 else Image.Resampling.BOX
        if block.ndim == 2 or block.shape[2] in (3, 4):
            return np.asarray(Image.fromarray(block).resize((width, height), method, box=box))
        channels = [  # other channel counts: one grey image each
            np.asarray(Image.fromarray(block[..., c]).resize((width, height), method, box=box))
            for c in range(block.shape[2])
        ]
        return np.stack(channels, axis=-1)

    def __reduce__(self) -> tuple:
        return (ResampledLevel, (self.source, self.factor))


#: Upsampling beyond this gives a model less detail than it was trained on: said aloud.
UPSAMPLING_WARNED = 1.5


def resampling_note(factor: float, model_mpp: float | None) -> str:
    """What a run should tell its user about ``factor`` (source px per model px): nothing
    when the model read a level as it is."""
    if factor == 1.0 or model_mpp is None:
        return ""
    if factor > 1:
        return f"tiles downsampled {factor:.3g}× to the model's {model_mpp:g} µm/px"
    note = f"tiles upsampled {1 / factor:.3g}× to the model's {model_mpp:g} µm/px"
    if 1 / factor > UPSAMPLING_WARNED:
        note += ": the slide has less detail than the model was trained on"
    return note


def model_scale(
    level_mpps: Sequence[float], target_mpp: float | None, tolerance: float = 0.1
) -> tuple[int, float]:
    """Where a model of ``target_mpp`` µm/px reads a pyramid whose levels have
    ``level_mpps``: (level, factor), factor being level pixels per model pixel.

    The level nearest in ratio when it lies within ``tolerance`` (relative) of the model
    (factor 1: read as it is); else the coarsest level at least as fine as the model,
    downsampled, or level 0 upsampled when every level is coarser."""
    if target_mpp is None or not level_mpps:
        return 0, 1.0
    nearest = min(range(len(level_mpps)), key=lambda i: abs(math.log(level_mpps[i] / target_mpp)))
    if abs(level_mpps[nearest] / target_mpp - 1) <= tolerance:
        return nearest, 1.0
    fine = [i for i, mpp in enumerate(level_mpps) if mpp <= target_mpp * (1 + tolerance)]
    level = max(fine, key=lambda i: level_mpps[i]) if fine else 0
    return level, target_mpp / level_mpps[level]
