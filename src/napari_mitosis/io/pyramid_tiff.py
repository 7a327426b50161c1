"""Tiled pyramidal TIFF writing with bounded memory.

Levels go in as separate tiled pages (not SubIFDs), the layout OpenSlide's generic-TIFF
reader opens as a pyramid; resolution tags carry µm/pixel in centimetre units, which
OpenSlide, QuPath and tifffile all read. Tiles are computed one at a time, so a Dask
input (a slide level, a heatmap) never has to fit in memory.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import tifffile

from napari_mitosis.io.output_file import atomic_output
from napari_mitosis.io.plain_image import DESCRIPTION_KEY

Compression = Literal["zlib", "jpeg", "none"]
#: A level at or below this size (bytes) is held in memory to derive the next levels.
IN_MEMORY_LEVEL = 256 * 2**20
ProgressCallback = Callable[[int, int], None]


def pyramid_levels(image: Any, *, tile: int = 256, labels: bool = False) -> list[Any]:
    """Level 0 and ×2 reductions until a level fits in one tile (lazy where the input is).

    Images average 2×2 blocks; labels keep every second pixel so no new value appears.
    """
    levels = [image]
    current = image
    while max(current.shape[:2]) > tile:
        if labels:
            current = current[::2, ::2]
        else:
            # Chunks of whole tile rows: the next level's tiles are written a band at a
            # time, and each band then averages its own rows once (square chunks made
            # every 256 px tile recompute a whole ≈128 MiB chunk).
            lazy = (
                current
                if isinstance(current, da.Array)
                else da.from_array(current, chunks=(2 * tile, *current.shape[1:]))
            )
            axes = {0: 2, 1: 2}
            current = da.coarsen(np.mean, lazy, axes, trim_excess=True)
            if np.issubdtype(image.dtype, np.integer):  # probabilities stay fractional
                current = da.round(current)
            current = current.astype(image.dtype)
        if current.nbytes <= IN_MEMORY_LEVEL:
            current = np.asarray(current)
        levels.append(current)
    return levels


def _tiles(level: Any, tile: int) -> Iterator[np.ndarray]:
    """Row-major tiles, edge tiles zero-padded to the full tile size as TIFF requires.

    A lazy level is computed one band of tile rows at a time (one compute per band, not
    per tile), so memory holds one band: ``tile`` × level width.
    """
    height, width = level.shape[:2]
    for y in range(0, height, tile):
        band = np.asarray(level[y : y + tile])
        for x in range(0, width, tile):
            block = band[:, x : x + tile]
            if block.shape[:2] != (tile, tile):
                pad = [(0, tile - block.shape[0]), (0, tile - block.shape[1])]
                block = np.pad(block, pad + [(0, 0)] * (block.ndim - 2))
            yield block


def _counted(
    tiles: Iterator[np.ndarray],
    counter: Iterator[int],
    total: int,
    progress: ProgressCallback | None,
) -> Iterator[np.ndarray]:
    """Report each tile as it is handed to the writer (the writer never asks past the last)."""
    for block in tiles:
        done = next(counter)
        if progress is not None:
            progress(done, total)
        yield block


def write_pyramid_tiff(
    path: str | Path,
    image: Any,
    *,
    mpp: tuple[float, float] | None = None,
    layer_type: Literal["image", "labels"] = "image",
    tile: int = 256,
    compression: Compression = "zlib",
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Write ``image`` (y, x[, c]) as a tiled pyramidal TIFF, atomically.

    ``mpp`` is (y, x) µm per pixel of ``image``. ``progress(done, total)`` is called per
    tile; raising from it cancels the write and leaves no file behind. ``compression``
    defaults to lossless zlib; ``jpeg`` suits RGB photographs such as sample slides.
    """
    path = Path(path)
    if image.ndim not in (2, 3) or min(image.shape[:2]) < 1:
        raise ValueError(f"{path}: expected a non-empty (y, x[, c]) array, got shape {image.shape}")
    if compression == "jpeg" and not (image.dtype == np.uint8 and image.ndim == 3):
        raise ValueError(f"{path}: JPEG needs 8-bit RGB; got {image.dtype} {image.shape}")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (TIFF rule), not {tile}")
    levels = pyramid_levels(image, tile=tile, labels=layer_type == "labels")
    info: dict[str, Any] = {"layer_type": layer_type, "pyramid": True, **(extra or {})}
    if mpp is not None:
        info["mpp"] = [float(mpp[0]), float(mpp[1])]
    total = sum(-(-lv.shape[0] // tile) * -(-lv.shape[1] // tile) for lv in levels)
    counter = itertools.count(1)
    photometric = "rgb" if image.ndim == 3 and image.shape[-1] in (3, 4) else "minisblack"
    bigtiff = image.nbytes > 2**31

    with (
        atomic_output(path, overwrite=overwrite) as tmp,
        tifffile.TiffWriter(tmp, bigtiff=bigtiff) as tif,
    ):
        for index, level in enumerate(levels):
            down_y = image.shape[0] / level.shape[0]
            down_x = image.shape[1] / level.shape[1]
            options: dict[str, Any] = {}
            if mpp is not None:
                options["resolution"] = (1e4 / (mpp[1] * down_x), 1e4 / (mpp[0] * down_y))
                options["resolutionunit"] = "CENTIMETER"

            tif.write(
                _counted(_tiles(level, tile), counter, total, progress),
                shape=level.shape,
                dtype=level.dtype,
                tile=(tile, tile),
                photometric=photometric,
                compression=None if compression == "none" else compression,
                subfiletype=1 if index else 0,
                description=json.dumps({DESCRIPTION_KEY: info}) if index == 0 else None,
                metadata=None,
                **options,
            )
    return path
