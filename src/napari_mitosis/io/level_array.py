"""Slide levels as Dask arrays whose viewer-sized reads skip Dask's scheduler.

Every level a slide gives napari and scripts is a real ``dask.array.Array``: tile-aligned
chunks, picklable (the source reopens its file on a worker), usable with ``map_blocks``,
``dask.compute`` and distributed. But computing a Dask slice costs 10–20 ms of graph
optimisation and scheduling on a slide level (more with more chunks), ten times the read
itself, and napari reads a slice at every pan and zoom. So a plain-slice read of up to
`DIRECT_PX` pixels returns a `RegionArray`, which NumPy conversion (``np.asarray``, what
napari does) reads straight from the source, and whose Dask side (the same tile-aligned
chunks and tasks as Dask's own slice) is built only if used. ``.compute()`` and every Dask operation still go
through the graph and give the same pixels.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import dask.array as da
import numpy as np

#: Plain-slice reads up to this many pixels (a 4096² viewport) take the direct path.
DIRECT_PX = 4096 * 4096


def _read_block(source: Any, key: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(source[key])


def _edges(start: int, stop: int, tile: int) -> list[int]:
    """Chunk edges of [start, stop) on a grid of ``tile`` (the level's own tiles)."""
    inner = range((start // tile + 1) * tile, stop, tile)
    return [start, *inner, stop]


#: The attributes `dask.array.Array.__new__` sets; a `RegionArray` sets them on first use.
_ARRAY_SLOTS = frozenset({"dask", "_meta", "_Array__name", "_Array__chunks", "_cached_keys"})


class RegionArray(da.Array):
    """A plain-slice region of a `LevelArray`: a Dask array that NumPy reads directly.

    Building a Dask array (graph, chunks, meta) costs ≈40 µs, most of a cached tile's read,
    and NumPy conversion never needs it; so the Dask side is built on first use of any of
    its attributes, and is then exactly what `LevelArray.dask_region` gives.
    """

    def __new__(cls, level: LevelArray, key: tuple[slice, ...]) -> RegionArray:
        region = object.__new__(cls)  # `da.Array.__new__` runs in `__getattr__`, if ever
        region.__dict__.update(_level=level, _key=key)
        return region

    def __init__(self, level: LevelArray, key: tuple[slice, ...]) -> None:
        """Nothing more to set: see `__new__`."""

    def __getattr__(self, name: str) -> Any:
        level = self.__dict__.get("_level")
        if name not in _ARRAY_SLOTS or level is None:
            raise AttributeError(name)
        full = level.dask_region(self.__dict__["_key"])
        for slot in _ARRAY_SLOTS:
            setattr(self, slot, getattr(full, slot))
        return getattr(self, name)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        pixels = np.asarray(self.__dict__["_level"]._source[self.__dict__["_key"]])
        return pixels if dtype is None else pixels.astype(dtype, copy=False)


class LevelArray(da.Array):
    """One slide level as a tile-aligned Dask array over a direct ``source``.

    ``source`` is any array-like that reads ``source[y0:y1, x0:x1(, c0:c1)]`` into NumPy
    (an OpenSlide level, a zarr array); it must be picklable for workers.
    """

    _source: Any
    _tile: tuple[int, int]

    def __getitem__(self, index: Any) -> Any:
        key = self._plain_key(index)
        if key is None:
            return super().__getitem__(index)
        return RegionArray(self, key)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.asarray(self[...], dtype=dtype)

    def _plain_key(self, index: Any) -> tuple[slice, ...] | None:
        """``index`` as one step-1 slice per axis when it is a small plain-slice read."""
        index = index if isinstance(index, tuple) else (index,)
        if any(i is Ellipsis for i in index):
            if sum(i is Ellipsis for i in index) > 1:
                return None
            at = next(n for n, i in enumerate(index) if i is Ellipsis)
            fill = (slice(None),) * (self.ndim - len(index) + 1)
            index = index[:at] + fill + index[at + 1 :]
        if len(index) > self.ndim or not all(isinstance(i, slice) for i in index):
            return None
        index = index + (slice(None),) * (self.ndim - len(index))
        key = []
        for part, size in zip(index, self.shape, strict=True):
            start, stop, step = part.indices(size)
            if step != 1 or stop <= start:
                return None
            key.append(slice(start, stop))
        height, width = key[0].stop - key[0].start, key[1].stop - key[1].start
        return tuple(key) if height * width <= DIRECT_PX else None

    def dask_region(self, key: tuple[slice, ...]) -> da.Array:
        """The plain-slice region ``key`` as a Dask array: one task per tile it touches,
        the same chunks as Dask's own slicing gives."""
        rows = _edges(key[0].start, key[0].stop, self._tile[0])
        cols = _edges(key[1].start, key[1].stop, self._tile[1])
        rest = key[2:]
        name = f"{self.name}-region-" + "-".join(f"{k.start}:{k.stop}" for k in key)
        zeros = (0,) * len(rest)
        graph = {
            (name, i, j, *zeros): (_read_block, self._source, (slice(y0, y1), slice(x0, x1), *rest))
            for i, (y0, y1) in enumerate(pairwise(rows))
            for j, (x0, x1) in enumerate(pairwise(cols))
        }
        chunks = (
            tuple(b - a for a, b in pairwise(rows)),
            tuple(b - a for a, b in pairwise(cols)),
            *((k.stop - k.start,) for k in rest),
        )
        return da.Array(graph, name, chunks, meta=self._meta)


def level_array(source: Any, *, tile: tuple[int, int], name: str) -> LevelArray:
    """``source`` as a `LevelArray` with chunks of ``tile`` = (height, width) px.

    ``name`` keys its tasks: the same file, level and colour mode give the same name, so
    Dask caches recognise repeated reads.
    """
    chunks = (*tile, *source.shape[2:])
    base = da.from_array(
        source,
        chunks=chunks,
        name=name,
        asarray=False,
        fancy=False,
        lock=False,
        meta=np.empty((0,) * len(source.shape), source.dtype),
    )
    level = LevelArray(base.dask, base.name, base.chunks, meta=base._meta)
    level._source, level._tile = source, tile
    return level
