"""Regions of a TIFF-based slide cut from its own decoded tiles, without OpenSlide's painting.

OpenSlide composes every region through cairo at ≈30 ns per pixel: on our 2-core test box a
299² patch costs 2.6 ms inside OpenSlide even when all its tiles are cached, while
libjpeg-turbo decodes a whole 256² tile in 0.56 ms. For the layouts OpenSlide reads as
plain tiled TIFF — Aperio SVS and generic pyramidal TIFF — we read a tile's bytes with
``os.pread``, decode them with tifffile's codecs (imagecodecs, which release the GIL), keep
decoded tiles in a bounded LRU cache and copy regions out of them. The pixels are
OpenSlide's own (the same libjpeg-turbo; the tests compare regions at every level). Any other
vendor, colour layout or compression stays with OpenSlide.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Vendors whose levels are plain TIFF pages that OpenSlide shows unchanged.
PLAIN_TIFF_VENDORS = frozenset({"aperio", "generic-tiff"})
#: TIFF compressions decoded here: none, LZW, JPEG, Deflate (Adobe and old-style).
DECODED_COMPRESSIONS = frozenset({1, 5, 7, 8, 32946})
#: Decoded tiles kept per slide (a 4096 px reading strip of 256 px tiles needs ≈10 MiB).
CACHE_BYTES = 64 * 2**20
#: An Adobe APP14 segment with transform 0: "these components are RGB, not YCbCr". Aperio
#: writes RGB JPEG tiles (photometric RGB) that decoders would otherwise take for YCbCr.
ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


@dataclass(frozen=True)
class TiledPage:
    """Where one level's tiles are in the file and how to decode them."""

    width: int
    height: int
    tile_width: int
    tile_height: int
    tiles_across: int
    offsets: tuple[int, ...]
    byte_counts: tuple[int, ...]
    decode: Any  # tifffile's TiffPage.decode
    jpeg_tables: bytes | None
    jpeg: bool = False  # compression 7: tiles are JPEG streams (`TiffTiles.jpeg_stream`)
    rgb_jpeg: bool = False  # JPEG in RGB (photometric 2), not YCbCr


def _plain_rgb_tiles(page: Any) -> bool:
    """8-bit, 3-sample, interleaved RGB tiles (or JPEG in YCbCr) in a compression we decode."""
    photometric = int(page.photometric)
    return (
        page.is_tiled
        and page.tiledepth == 1
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and int(page.planarconfig) == 1
        and int(page.compression) in DECODED_COMPRESSIONS
        and (photometric == 2 or (photometric == 6 and int(page.compression) == 7))
    )


class TiffTiles:
    """Level regions from decoded tiles; levels this cannot decode are not in ``levels``.

    Thread-safe: reads use ``os.pread`` on one descriptor, decoding happens outside the cache
    lock, so reader threads decode in parallel.
    """

    def __init__(self, path: Path, pages: dict[int, TiledPage], closer: Any) -> None:
        self.path = path
        self.levels = pages
        self._closer = closer
        self._fd = os.open(path, os.O_RDONLY)
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._pending: dict[tuple[int, int], Future[np.ndarray]] = {}
        self._cached_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls, path: Path, vendor: str, level_dimensions: list[tuple[int, int]]
    ) -> TiffTiles | None:
        """Decoders for the slide's levels, or None when none of them is plain TIFF tiles."""
        if vendor not in PLAIN_TIFF_VENDORS:
            return None
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except (tifffile.TiffFileError, OSError, ValueError):
            return None  # OpenSlide opened it; let it read it too
        pages: dict[int, TiledPage] = {}
        candidates = [p for p in tif.pages if _plain_rgb_tiles(p)]
        for level, (width, height) in enumerate(level_dimensions):
            match = next(
                (p for p in candidates if (p.imagewidth, p.imagelength) == (width, height)), None
            )
            if match is None:
                continue
            pages[level] = TiledPage(
                width,
                height,
                match.tilewidth,
                match.tilelength,
                -(-width // match.tilewidth),
                tuple(match.dataoffsets),
                tuple(match.databytecounts),
                match.decode,
                match.jpegtables,
                int(match.compression) == 7,
                int(match.compression) == 7 and int(match.photometric) == 2,
            )
        if not pages:
            tif.close()
            return None
        return cls(Path(path), pages, tif)

    def tile(self, level: int, index: int, background: np.ndarray) -> np.ndarray:
        """A decoded tile from the cache; else decoded here, or awaited from the thread
        already decoding it (reader threads on neighbouring patches want the same tiles)."""
        key = (level, index)
        with self._lock:
            tile = self._cache.get(key)
            if tile is not None:
                self._cache.move_to_end(key)
                return tile
            pending = self._pending.get(key)
            if pending is None:
                self._pending[key] = mine = Future()
        if pending is not None:
            return pending.result()
        try:
            tile = self._decode(level, index, background)
        except BaseException as err:
            with self._lock:
                del self._pending[key]
            mine.set_exception(err)
            raise
        with self._lock:
            del self._pending[key]
            self._cache[key] = tile
            self._cached_bytes += tile.nbytes
            while self._cached_bytes > CACHE_BYTES and len(self._cache) > 1:
                self._cached_bytes -= self._cache.popitem(last=False)[1].nbytes
        mine.set_result(tile)
        return tile

    def _decode(self, level: int, index: int, background: np.ndarray) -> np.ndarray:
        page = self.levels[level]
        count = page.byte_counts[index]
        if count == 0:  # a tile the scanner never wrote: OpenSlide shows the background
            tile = np.empty((page.tile_height, page.tile_width, 3), np.uint8)
            tile[:] = background
        else:
            data = os.pread(self._fd, count, page.offsets[index])
            if len(data) != count:
                raise OSError(f"tile {index} of level {level} is cut short ({len(data)} bytes)")
            segment = page.decode(data, index, jpegtables=page.jpeg_tables)[0]
            if segment is None:
                raise ValueError(f"tile {index} of level {level} could not be decoded")
            tile = segment.reshape(page.tile_height, page.tile_width, 3)
        return tile

    def jpeg_stream(self, level: int, index: int) -> bytes | None:
        """Tile ``index`` of ``level`` as one complete JPEG stream any decoder takes (nvJPEG
        through `torchvision.io.decode_jpeg` included), or None when the tile is not JPEG
        or was never written.

        Abbreviated streams (Aperio's: no tables of their own) get the TIFF's JPEGTables
        spliced in; RGB-coded tiles get an Adobe marker saying so."""
        page = self.levels[level]
        count = page.byte_counts[index]
        if not page.jpeg or count == 0:
            return None
        data = os.pread(self._fd, count, page.offsets[index])
        if len(data) != count or data[:2] != b"\xff\xd8":
            raise OSError(f"{self.path}: tile {index} of level {level} is not a whole JPEG")
        body = data[2:]
        if page.jpeg_tables:  # SOI + tables + EOI: keep the tables, drop both markers
            body = page.jpeg_tables[2:-2] + body
        return b"\xff\xd8" + (ADOBE_RGB if page.rgb_jpeg else b"") + body

    def read(
        self, level: int, y0: int, y1: int, x0: int, x1: int, background: np.ndarray
    ) -> np.ndarray:
        """Level pixels [y0, y1) × [x0, x1) (inside the level) as (h, w, 3) uint8."""
        page = self.levels[level]
        th, tw = page.tile_height, page.tile_width
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // th, (y1 - 1) // th + 1):
            top, bottom = max(y0, ty * th), min(y1, (ty + 1) * th)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                left, right = max(x0, tx * tw), min(x1, (tx + 1) * tw)
                tile = self.tile(level, ty * page.tiles_across + tx, background)
                out[top - y0 : bottom - y0, left - x0 : right - x0] = tile[
                    top - ty * th : bottom - ty * th, left - tx * tw : right - tx * tw
                ]
        return out

    def close(self) -> None:
        os.close(self._fd)
        self._closer.close()
        self._cache.clear()
