"""The tile grid every tiled engine shares: where tiles are, at which level, in level-0 pixels.

Tiles are full-sized and row-major; the last row/column is pulled back to end at the region
edge (so no tile is padded unless the region itself is smaller than a tile), except on a
``uniform`` grid (classifier heatmaps), where tile i starts at exactly i × stride.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: A rectangle of a level, (y0, x0, y1, x1) in its pixels.
Region = tuple[int, int, int, int]


def _starts(start: int, stop: int, tile: int, stride: int, uniform: bool = False) -> list[int]:
    if uniform:  # every stride, the last tile may overhang the region (classifier cells)
        return list(range(start, stop, stride))
    length = stop - start
    if length <= tile:
        return [start]
    starts = list(range(start, stop - tile + 1, stride))
    if starts[-1] + tile < stop:
        starts.append(stop - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``tile`` px every ``stride`` px over ``region`` = (y0, x0, y1, x1) of a level.

    ``downsample`` converts level pixels to level-0 pixels (µm = level-0 px × mpp).
    """

    level_shape: tuple[int, int]
    tile: int
    stride: int
    region: tuple[int, int, int, int]
    level: int = 0
    downsample: float = 1.0
    uniform: bool = False  # tiles exactly every stride (no pull-back at the far edge)

    @classmethod
    def over(
        cls,
        shape: tuple[int, ...],
        tile: int,
        overlap: int,
        *,
        region: tuple[int, int, int, int] | None = None,
        level: int = 0,
        downsample: float = 1.0,
        uniform: bool = False,
    ) -> TileGrid:
        """A grid with ``overlap`` px shared between neighbouring tiles."""
        if not 0 <= overlap < tile:
            raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
        height, width = int(shape[0]), int(shape[1])
        y0, x0, y1, x1 = region or (0, 0, height, width)
        y0, x0, y1, x1 = max(0, int(y0)), max(0, int(x0)), min(height, int(y1)), min(width, int(x1))
        if y1 <= y0 or x1 <= x0:
            raise ValueError(f"region {region} is empty or outside the {width} × {height} image")
        return cls(
            (height, width), tile, tile - overlap, (y0, x0, y1, x1), level, downsample, uniform
        )

    @property
    def rows(self) -> list[int]:
        return _starts(self.region[0], self.region[2], self.tile, self.stride, self.uniform)

    @property
    def cols(self) -> list[int]:
        return _starts(self.region[1], self.region[3], self.tile, self.stride, self.uniform)

    def origins(self) -> np.ndarray:
        """(n, 2) tile origins ``(y, x)`` in level pixels, row-major."""
        ys, xs = np.meshgrid(self.rows, self.cols, indexing="ij")
        return np.stack([ys.ravel(), xs.ravel()], axis=1)

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def to_level0(self, yx: np.ndarray) -> np.ndarray:
        return np.asarray(yx, float) * self.downsample

    def read(self, source: Any, y: int, x: int) -> np.ndarray:
        """One tile from an array-like (y, x[, c]); zero-padded where the image ends."""
        block = np.asarray(source[y : y + self.tile, x : x + self.tile])
        if block.shape[:2] != (self.tile, self.tile):
            pad = [(0, self.tile - block.shape[0]), (0, self.tile - block.shape[1])]
            block = np.pad(block, pad + [(0, 0)] * (block.ndim - 2))
        return block


#: Width of a reading strip, in pixels of the level read: a strip's tiles for a few rows of
#: patches fit OpenSlide's 32 MiB tile cache (256 px RGBA tiles are 256 KiB each).
READ_STRIP_PX = 4096


def strip_order(origins: np.ndarray, cell: int, strip_px: int = READ_STRIP_PX) -> np.ndarray:
    """``origins`` (y, x) regrouped into vertical strips about ``strip_px`` wide (whole
    ``cell``s), row-major inside each strip.

    Why: neighbouring patch rows share the slide's tile rows, and OpenSlide decodes each
    tile once only while it stays in its cache. Row-major over a 40,000 px wide slide, a
    tile row is evicted before the next patch row needs it; in strips it is not, and reads
    of 96 px patches ran 1.5–1.65× faster (raw OpenSlide, 2-core CPU). Only for
    engines whose result does not depend on tile order.
    """
    origins = np.asarray(origins)
    if len(origins) == 0:
        return origins
    width = max(1, strip_px // cell) * cell
    strip = (origins[:, 1] - origins[:, 1].min()) // width
    return origins[np.lexsort((origins[:, 1], origins[:, 0], strip))]


def crop_origin(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    crop: int,
    centre: tuple[float, float] | None = None,
) -> tuple[int, int]:
    """Top-left (y, x) of a training crop: uniform, or with ``centre`` in its middle half."""
    h, w = int(shape[0]), int(shape[1])
    if centre is None:
        return int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
    cy, cx = centre
    y = int(np.clip(cy - rng.integers(crop // 4, 3 * crop // 4), 0, h - crop))
    x = int(np.clip(cx - rng.integers(crop // 4, 3 * crop // 4), 0, w - crop))
    return y, x
