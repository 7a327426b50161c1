"""A large synthetic slide in about a minute: one synthetic field (≈45 s per 8192² px on
one core) repeated ``copies`` × ``copies`` times, written as the same JPEG-tiled pyramid
OpenSlide reads. Large slides show what small ones hide: a 40,000 px wide level whose tile
rows no longer fit OpenSlide's tile cache.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
from napari_mitosis.samples.synthetic import synthetic_slide, write_synthetic_slide


def write_large_slide(
    path: Path, field: int, copies: int = 1, *, mpp: float = 0.5, seed: int = 7
) -> Path:
    """A ``field × copies`` px square slide at ``mpp`` µm/px (``copies`` = 1: one field)."""
    if copies == 1:
        write_synthetic_slide(path, field, field, mpp=mpp, seed=seed)
        return path
    rgb, _ = synthetic_slide(field, field, mpp=mpp, seed=seed)
    return write_pyramid_tiff(
        path, np.tile(rgb, (copies, copies, 1)), mpp=(mpp, mpp), compression="jpeg"
    )
