"""Cell grids (tumour heatmaps, masks) as layers that end where the image ends.

A classifier's grid has one value per cell of ``cell`` level-0 pixels, and its last row
and column of cells usually reach past the slide's edge. Shown at one pixel per cell,
those cells would draw past the image. So a grid becomes a multiscale layer at the image's
own pixel size: level 0 has one pixel per slide pixel (each a copy of its cell's value),
cut at the image's edge, and coarser levels halve it down to about one pixel per cell.
Every level is lazy (Dask): napari computes only the chunks on screen, from the small grid.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np

#: Level chunks (px): what napari computes per request.
CHUNK = 1024


def _fill(values: np.ndarray, px_per_value: float, block_info: Any = None) -> np.ndarray:
    """The chunk at ``block_info``'s location: each pixel takes the value of the cell its
    centre falls in."""
    (y0, y1), (x0, x1) = block_info[None]["array-location"]
    rows = np.minimum(((np.arange(y0, y1) + 0.5) / px_per_value).astype(int), len(values) - 1)
    cols = np.minimum(((np.arange(x0, x1) + 0.5) / px_per_value).astype(int), values.shape[1] - 1)
    return values[np.ix_(rows, cols)]


def clipped_levels(values: Any, *, cell0: float, extent0: tuple[float, float]) -> list[da.Array]:
    """``values`` (one per cell of ``cell0`` level-0 px) as lazy levels at 1, 2, 4, … level-0
    px per pixel, level 0 being ``extent0`` = (height, width) level-0 px from the grid's
    origin, and no level coarser than one pixel per cell."""
    values = np.asarray(values)
    height, width = (max(1, round(v)) for v in extent0)
    levels, factor = [], 1
    while True:
        shape = (math.ceil(height / factor), math.ceil(width / factor))
        chunks = da.core.normalize_chunks((CHUNK, CHUNK), shape)
        levels.append(
            da.map_blocks(
                _fill,
                values=values,
                px_per_value=cell0 / factor,
                chunks=chunks,
                dtype=values.dtype,
                meta=np.empty((0, 0), values.dtype),
            )
        )
        if factor * 2 > cell0 or min(shape) <= 1:
            return levels
        factor *= 2


def grid_layers(
    values: Any,
    labels: dict[str, Any],
    *,
    origin0: tuple[float, float],
    cell0: float,
    end0: tuple[float, float],
    scale0: tuple[float, float],
    translate0: tuple[float, float] = (0.0, 0.0),
) -> tuple[list[da.Array], dict[str, list[da.Array]], dict[str, Any]]:
    """A heatmap and its label grids, each as `clipped_levels` over [``origin0``, ``end0``)
    in level-0 px, and the layer geometry that puts them on an image of level-0 pixel size
    ``scale0`` and translation ``translate0``."""
    extent = (end0[0] - origin0[0], end0[1] - origin0[1])
    geometry = {
        "scale": tuple(float(s) for s in scale0),
        "translate": tuple(t + o * s for t, o, s in zip(translate0, origin0, scale0, strict=True)),
    }
    image = clipped_levels(values, cell0=cell0, extent0=extent)
    masks = {name: clipped_levels(v, cell0=cell0, extent0=extent) for name, v in labels.items()}
    return image, masks, geometry
