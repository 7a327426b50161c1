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
from scipy.ndimage import binary_closing
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_holes, remove_small_objects

from napari_mitosis.tiling import TileGrid


@dataclass(frozen=True)
class TissueMask:
    """A boolean mask and its downsample (y, x) relative to level 0."""

    mask: np.ndarray
    downsample: tuple[float, float]

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())

    def tile_fractions(self, grid: TileGrid) -> np.ndarray:
        """Tissue fraction of each tile of ``grid`` (in the grid's origin order)."""
        scale_y = grid.downsample / self.downsample[0]
        scale_x = grid.downsample / self.downsample[1]
        fractions = []
        for y, x in grid.origins():
            y0, x0 = int(y * scale_y), int(x * scale_x)
            y1 = max(int(np.ceil((y + grid.tile) * scale_y)), y0 + 1)
            x1 = max(int(np.ceil((x + grid.tile) * scale_x)), x0 + 1)
            window = self.mask[y0:y1, x0:x1]
            fractions.append(float(window.mean()) if window.size else 0.0)
        return np.asarray(fractions)

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
    black) — without the hue it also computes, ≈5× faster on a 1536² thumbnail."""
    rgb = rgb[..., :3]
    top = rgb.max(axis=-1).astype(np.float64)
    spread = top - rgb.min(axis=-1)
    return np.divide(spread, top, out=np.zeros_like(top), where=top > 0)


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
    mask = binary_closing(mask, disk(2), border_value=0)
    pixel_area = (level0_mpp or 1.0) ** 2 * downsample[0] * downsample[1]
    mask = remove_small_objects(mask, max_size=max(int(min_object_um2 / pixel_area), 1))
    mask = remove_small_holes(mask, max_size=max(int(min_hole_um2 / pixel_area), 1))
    return TissueMask(mask, downsample)


def slide_tissue_mask(slide: Any, **options: Any) -> TissueMask:
    """`tissue_mask` of a `Slide`, with its µm/pixel for the size rules."""
    return tissue_mask(
        slide.viewer_levels, level0_mpp=slide.mpp[1] if slide.mpp else None, **options
    )
