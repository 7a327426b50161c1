"""OpenSlide as a lazy pixel source: the single place that touches the OpenSlide library.

Each level becomes a Dask array whose chunks are the slide's own tiles; a chunk is one
read: the tile decoded by `tiff_tiles` where the level is plain TIFF tiles (Aperio SVS,
generic TIFF), else one ``read_region`` call. The handle is picklable (it reopens the file after unpickling), so
the same arrays work on Dask workers. A failed read raises :class:`CorruptSlideError`:
it never turns into a blank tile.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import openslide
from PIL import ImageCms

from napari_mitosis.io.errors import CorruptSlideError, UnsupportedFormatError
from napari_mitosis.io.level_array import level_array
from napari_mitosis.io.slide import ColorMode, Slide, SlideMetadata
from napari_mitosis.io.tiff_tiles import TiffTiles

DEFAULT_TILE = 256
#: Requests of at least this many pixels (a screenful) are split into bands read in
#: parallel; patch-sized ones are read on the caller's thread, which is already one of
#: several reader threads (sending them through the shared band pool capped them at 4).
SPLIT_PX = 1024 * 1024


def is_openslide_slide(path: Path) -> bool:
    """True when OpenSlide recognises the file and it holds RGB pixels.

    A generic TIFF that is not 8-bit RGB (a label mask, a greyscale frame) is better read
    by tifffile, which keeps its values instead of OpenSlide's RGBA rendering.
    """
    vendor = openslide.OpenSlide.detect_format(str(path))
    if vendor is None:
        return False
    if vendor != "generic-tiff":
        return True
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            description = page.description or ""
            is_rgb8 = page.samplesperpixel >= 3 and page.dtype == np.uint8
    except (tifffile.TiffFileError, ValueError, OSError):
        return True  # let OpenSlide report what is wrong with it
    return is_rgb8 and '"layer_type": "labels"' not in description


class OpenSlideHandle:
    """A lazily opened, picklable OpenSlide handle that reads RGB regions.

    Pickling keeps only the path and colour mode; a Dask worker reopens the slide on its
    first read. OpenSlide itself is thread-safe, so one handle serves every thread.
    """

    def __init__(self, path: Path, color: ColorMode = "raw") -> None:
        self.path = Path(path)
        self.color = color
        self._slide: openslide.OpenSlide | None = None
        self._transform: ImageCms.ImageCmsTransform | None = None
        self._background = np.array([255, 255, 255], np.float32)
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._tiles: TiffTiles | bool | None = False  # False: not looked for yet
        self.workers = max(1, min(4, os.cpu_count() or 1))

    @property
    def pool(self) -> ThreadPoolExecutor:
        """Threads for reading bands of one large request in parallel (created on first use)."""
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="openslide")
        return self._pool

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "color": self.color}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["color"])  # type: ignore[misc]

    @property
    def slide(self) -> openslide.OpenSlide:
        if self._slide is None:
            with self._lock:
                if self._slide is None:
                    self._slide = self._open()
        return self._slide

    @property
    def background(self) -> tuple[int, int, int]:
        """The slide's background colour (OpenSlide's property, else white): what fills
        the tiles a scanner never wrote."""
        _ = self.slide  # opening reads it
        r, g, b = (int(v) for v in self._background)
        return r, g, b

    def _open(self) -> openslide.OpenSlide:
        try:
            slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideUnsupportedFormatError as err:
            raise UnsupportedFormatError(self.path, f"OpenSlide cannot read it ({err})") from err
        except (openslide.OpenSlideError, OSError) as err:
            raise CorruptSlideError(self.path, f"truncated or damaged slide ({err})") from err
        bg = slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "FFFFFF")
        self._background = np.array([int(bg[i : i + 2], 16) for i in (0, 2, 4)], np.float32)
        if self.color == "srgb" and slide.color_profile is not None:
            self._transform = ImageCms.buildTransform(
                slide.color_profile, ImageCms.createProfile("sRGB"), "RGBA", "RGBA"
            )
        return slide

    def tiles(self, level: int) -> TiffTiles | None:
        """Our own tile decoder when this level is plain TIFF tiles shown as stored (raw
        colour), else None: OpenSlide reads it (`tiff_tiles` says why)."""
        if self._tiles is False:
            slide = self.slide
            with self._lock:
                if self._tiles is False:
                    vendor = slide.properties.get(openslide.PROPERTY_NAME_VENDOR, "")
                    self._tiles = (
                        None
                        if self._transform is not None
                        else TiffTiles.open(self.path, vendor, list(slide.level_dimensions))
                    )
        tiles = self._tiles
        return tiles if isinstance(tiles, TiffTiles) and level in tiles.levels else None

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Level pixels [y0, y1) × [x0, x1): decoded tiles where we can, else OpenSlide."""
        tiles = self.tiles(level)
        if tiles is None:
            down = self.slide.level_downsamples[level]
            return self.read_rgb(level, round(x0 * down), round(y0 * down), x1 - x0, y1 - y0)
        try:
            return tiles.read(level, y0, y1, x0, x1, self._background.astype(np.uint8))
        except Exception as err:  # a codec's own error type, a short read: one message
            raise CorruptSlideError(
                self.path,
                f"reading level {level} rows {y0}–{y1}, columns {x0}–{x1} failed: {err}",
            ) from err

    def read_rgb(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """(height, width, 3) uint8 at level-0 position (x0, y0), RGBA composited on the
        slide's background colour (OpenSlide returns transparent pixels outside the scan)."""
        try:
            image = self.slide.read_region((x0, y0), level, (width, height))
        except openslide.OpenSlideError as err:
            raise CorruptSlideError(
                self.path,
                f"reading {width}×{height} px at level {level}, level-0 ({x0}, {y0}) failed: {err}",
            ) from err
        if self._transform is not None:
            ImageCms.applyTransform(image, self._transform, inPlace=True)
        # Pillow packs channels in C: ~8× faster than a strided NumPy copy of RGBA → RGB.
        if np.frombuffer(image.tobytes("raw", "A"), np.uint8).min() == 255:
            packed = bytearray(image.tobytes("raw", "RGB"))
            return np.frombuffer(packed, np.uint8).reshape(height, width, 3)
        rgba = np.asarray(image)
        alpha = rgba[..., 3:]
        weight = alpha.astype(np.float32) / 255.0
        mixed = rgba[..., :3] * weight + self._background * (1.0 - weight)
        return np.rint(mixed).astype(np.uint8)

    def associated_image(self, name: str) -> np.ndarray:
        return np.asarray(self.slide.associated_images[name].convert("RGB"))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if isinstance(self._tiles, TiffTiles):
            self._tiles.close()
        self._tiles = False
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class OpenSlideLevel:
    """Array-like ``(height, width, 3)`` uint8 view of one level, read on indexing.

    A request for a region costs one read per band of tile rows (bands read in parallel;
    decoding releases the GIL), with no task graph to build. The tiled engine reads
    through it directly (`Slide.sources`); napari, scripts and Dask workers get the
    level's `LevelArray` (a Dask array) over it, whose viewer-sized reads come here too.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(
        self,
        handle: OpenSlideHandle,
        level: int,
        width: int,
        height: int,
        downsample: float,
        tile: tuple[int, int],
    ) -> None:
        self.handle = handle
        self.level = level
        self.shape = (height, width, 3)
        self.downsample = downsample
        self.tile = tile  # (height, width) of the slide's own tiles
        self.size = height * width * 3
        self.nbytes = self.size

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        pixels = self[:, :]
        return pixels if dtype is None else pixels.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            key = tuple(k for k in key if k is not Ellipsis)
        key = key + (slice(None),) * (3 - len(key))
        if not all(isinstance(k, slice) for k in key[:2]):
            raise TypeError(f"{self.handle.path}: level arrays take slices, not {key[:2]!r}")
        (y0, y1, ys), (x0, x1, xs) = (
            k.indices(n) for k, n in zip(key[:2], self.shape[:2], strict=True)
        )
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(y1 - y0, 0), max(x1 - x0, 0), 3), np.uint8)[::ys, ::xs, key[2]]
        return self._read(y0, y1, x0, x1)[::ys, ::xs, key[2]]

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        tile_h = self.tile[0]
        bands = [(a, min(b, y1)) for a, b in _tile_rows(y0, y1, tile_h)]
        workers = self.handle.workers
        tiles_across = -(-(x1 - x0) // self.tile[1])
        pixels = (y1 - y0) * (x1 - x0)
        if workers == 1 or len(bands) == 1 or len(bands) * tiles_across < 4 or pixels < SPLIT_PX:
            return self._read_band(y0, y1, x0, x1)
        # Group tile rows into at most `workers` bands so each thread decodes whole tiles.
        per = -(-len(bands) // workers)
        groups = [
            (bands[i][0], bands[min(i + per, len(bands)) - 1][1]) for i in range(0, len(bands), per)
        ]
        parts = self.handle.pool.map(lambda g: self._read_band(g[0], g[1], x0, x1), groups)
        return np.concatenate(list(parts), axis=0)

    def _read_band(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.handle.read_level(self.level, y0, y1, x0, x1)


def _tile_rows(y0: int, y1: int, tile: int) -> list[tuple[int, int]]:
    """[start, stop) of each tile row that [y0, y1) touches, clipped to [y0, y1)."""
    first = y0 // tile * tile
    return [(max(a, y0), min(a + tile, y1)) for a in range(first, y1, tile)]


def _float_property(props: Any, name: str) -> float | None:
    try:
        value = float(props[name])
    except (KeyError, ValueError):
        return None
    return value if value > 0 else None


def _dask_token(path: Path, color: str) -> str:
    """Same file, same bytes, same colour → same Dask keys (cache hits); else new keys."""
    stat = path.stat()
    raw = json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns, color])
    return hashlib.sha1(raw.encode()).hexdigest()[:16]


def open_openslide(path: Path, *, color: ColorMode = "raw") -> Slide:
    """Open a slide with OpenSlide: metadata now, pixels only when a chunk is computed."""
    handle = OpenSlideHandle(path, color)
    slide = handle.slide
    props = slide.properties
    mpp_x = _float_property(props, openslide.PROPERTY_NAME_MPP_X)
    mpp_y = _float_property(props, openslide.PROPERTY_NAME_MPP_Y)
    mpp = (mpp_y, mpp_x) if mpp_x and mpp_y else None

    tile_sizes = []
    for i in range(slide.level_count):
        tw = props.get(f"openslide.level[{i}].tile-width", DEFAULT_TILE)
        th = props.get(f"openslide.level[{i}].tile-height", DEFAULT_TILE)
        tile_sizes.append((int(tw), int(th)))

    profile = slide.color_profile
    if color == "srgb" and profile is None:
        warnings.warn(f"{path}: has no ICC profile; its pixels are given as stored", stacklevel=2)
        color = "raw"
    metadata = SlideMetadata(
        path=str(path),
        vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
        mpp=mpp,
        objective_power=_float_property(props, openslide.PROPERTY_NAME_OBJECTIVE_POWER),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        tile_sizes=tuple(tile_sizes),
        background_rgb=handle.background,
        associated_images=tuple(slide.associated_images.keys()),
        color=color,
        color_profile=(ImageCms.getProfileDescription(profile).strip() if profile else None),
        properties=dict(props),
    )
    token = _dask_token(path, color)
    levels, views = [], []
    for i, ((w, h), down) in enumerate(
        zip(slide.level_dimensions, slide.level_downsamples, strict=True)
    ):
        tw, th = tile_sizes[i]
        source = OpenSlideLevel(handle, i, w, h, float(down), (th, tw))
        views.append(source)
        levels.append(level_array(source, tile=(th, tw), name=f"openslide-{token}-level{i}"))
    return Slide(metadata=metadata, levels=levels, sources=views, _closer=handle)
