"""Tissue detection on a low-resolution level: Otsu on saturation, then small-object cleanup.

Glass is bright and grey (low saturation); stained tissue is not. The mask is computed on
the finest level that fits ``max_size`` pixels, so it costs one small read per slide, and
tile grids ask it which tiles hold enough tissue to be worth a model call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import binary_closing, generate_binary_structure
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_holes, remove_small_objects

from napari_mitosis.engine.tiling import TileGrid

CROSS = generate_binary_structure(2, 1)  # 3 × 3, 4-connected


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask and its downsample (y, x) relative to level 0."""

    mask: np.ndarray
    downsample: tuple[float, float]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())

    def tile_fractions(self, grid: TileGrid) -> np.ndarray:
        """Tissue fraction of each tile of ``grid`` (in the grid's origin order): the mean of
        the mask under the tile (at least one mask pixel; 0 where the tile leaves the mask).

        Read off a summed-area table: 102k cells of a large slide take 0.02 s, against 3.9 s
        window by window (2-core CPU)."""
        origins = grid.origins().astype(np.float64)
        height, width = self.mask.shape
        scale_y = grid.downsample / self.downsample[0]
        scale_x = grid.downsample / self.downsample[1]
        y0 = np.floor(origins[:, 0] * scale_y).astype(np.int64)
        x0 = np.floor(origins[:, 1] * scale_x).astype(np.int64)
        y1 = np.maximum(np.ceil((origins[:, 0] + grid.tile) * scale_y).astype(np.int64), y0 + 1)
        x1 = np.maximum(np.ceil((origins[:, 1] + grid.tile) * scale_x).astype(np.int64), x0 + 1)
        y0, y1 = np.minimum(y0, height), np.minimum(y1, height)
        x0, x1 = np.minimum(x0, width), np.minimum(x1, width)
        table = np.zeros((height + 1, width + 1), np.int32)  # a thumbnail: < 2³¹ pixels
        np.cumsum(self.mask, axis=1, dtype=np.int32, out=table[1:, 1:])
        for row in range(2, height + 1):  # row by row: NumPy's cumsum down axis 0 is ≈6× slower
            table[row] += table[row - 1]
        inside = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
        area = (y1 - y0) * (x1 - x0)
        return np.divide(inside, area, out=np.zeros(len(area)), where=area > 0)

    def tissue_origins(self, grid: TileGrid, min_fraction: float) -> np.ndarray:
        """Origins of the tiles holding at least ``min_fraction`` tissue (never sent: the rest)."""
        keep = self.tile_fractions(grid) >= min_fraction
        return grid.origins()[keep]


def thumbnail_level(levels: Sequence[Any], max_size: int = 2048) -> int:
    """The finest level whose longer side fits ``max_size`` (else the coarsest)."""
    for index, level in enumerate(levels):
        if max(level.shape[:2]) <= max_size:
            return index
    return len(levels) - 1


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation, (max − min) / max, as `skimage.color.rgb2hsv` defines it (0 for
    black), without the hue it also computes. Channel-wise ``np.maximum`` rather than
    ``max(axis=-1)``: NumPy reduces a 3-long last axis slowly (0.33 s → 0.06 s on a 2048²
    thumbnail)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    top = np.maximum(np.maximum(r, g), b)
    spread = (top - np.minimum(np.minimum(r, g), b)).astype(np.float64)
    return np.divide(spread, top, out=np.zeros_like(spread), where=top > 0)


def tissue_mask(
    levels: Sequence[Any],
    *,
    max_size: int = 2048,
    level0_mpp: float | None = None,
    min_object_um2: float = 2000.0,
    min_hole_um2: float = 500.0,
) -> TissueMask:
    """Tissue on a low-resolution level of a pyramid (``levels``: finest first, RGB).

    Objects and holes below the given areas are removed (in µm² when ``level0_mpp`` is
    known, else the same numbers are taken as level-0 pixels).
    """
    index = thumbnail_level(levels, max_size)
    rgb = np.asarray(levels[index])
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(f"tissue detection needs an RGB image, got shape {rgb.shape}")
    downsample = (levels[0].shape[0] / rgb.shape[0], levels[0].shape[1] / rgb.shape[1])
    saturation = hsv_saturation(rgb)
    if np.ptp(saturation) < 1e-3:
        raise ValueError("the image is uniform: no tissue to detect")
    mask = saturation > threshold_otsu(saturation)
    # disk(2) is the 4-connected cross dilated by itself: two passes of the cross give the
    # same closing ≈1.4× faster
    mask = binary_closing(mask, CROSS, iterations=2, border_value=0)
    pixel_area = (level0_mpp or 1.0) ** 2 * downsample[0] * downsample[1]
    mask = remove_small_objects(mask, max_size=max(int(min_object_um2 / pixel_area), 1))
    mask = remove_small_holes(mask, max_size=max(int(min_hole_um2 / pixel_area), 1))
    return TissueMask(mask, downsample)


def slide_tissue_mask(slide: Any, **options: Any) -> TissueMask:
    """`tissue_mask` of a `Slide`, with its µm/pixel for the size rules; errors name it."""
    try:
        return tissue_mask(slide.sources, level0_mpp=slide.mpp[1] if slide.mpp else None, **options)
    except ValueError as err:
        raise ValueError(f"{slide.path}: {err}") from None
