"""Plain images (PNG/JPEG/BMP high-power fields, ultrasound frames, non-RGB or strip TIFFs).

Small files are read whole; large TIFFs stay lazy through tifffile's zarr view. µm/pixel
comes from TIFF resolution tags (or the description our own writer stores); other
formats are in pixel units, since their dpi describes a screen, not a microscope.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

from napari_mitosis.io.errors import CorruptSlideError, UnsupportedFormatError
from napari_mitosis.io.slide import Slide, SlideMetadata

#: TIFFs larger than this (bytes, decoded) are read lazily rather than into memory.
EAGER_LIMIT = 256 * 2**20
#: An inch-based TIFF resolution coarser than this (µm/px) is a screen dpi, not a scan.
MAX_PLAUSIBLE_MPP = 10.0
DESCRIPTION_KEY = "napari_mitosis"


def open_plain_image(path: Path) -> Slide:
    """Open a PNG/JPEG/BMP/TIFF as a single- (or few-) level `Slide`."""
    if path.suffix.lower() in (".tif", ".tiff"):
        return _open_tiff(path)
    return _open_pil(path)


def _metadata(
    path: Path,
    vendor: str,
    levels: list[Any],
    mpp: tuple[float, float] | None,
    layer_type: str = "image",
) -> SlideMetadata:
    dims = tuple((int(a.shape[1]), int(a.shape[0])) for a in levels)
    return SlideMetadata(
        path=str(path),
        vendor=vendor,
        mpp=mpp,
        objective_power=None,
        level_dimensions=dims,
        level_downsamples=tuple(dims[0][0] / d[0] for d in dims),
        tile_sizes=dims,
        layer_type=layer_type,  # type: ignore[arg-type]
    )


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Drop alpha the way a viewer shows it: blended over a white page."""
    colour, alpha = rgba[..., :-1].astype(np.float32), rgba[..., -1:].astype(np.float32)
    top = float(np.iinfo(rgba.dtype).max) if rgba.dtype.kind in "ui" else 1.0
    mixed = colour * (alpha / top) + top * (1.0 - alpha / top)
    return np.rint(mixed).astype(rgba.dtype) if rgba.dtype.kind in "ui" else mixed


def _open_pil(path: Path) -> Slide:
    try:
        with Image.open(path) as image:
            image.load()
            fmt = image.format or "image"
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                target = "LA" if image.mode in ("L", "LA") else "RGBA"
                pixels = _composite_on_white(np.asarray(image.convert(target)))
                if target == "LA":
                    pixels = pixels[..., 0]
            elif image.mode in ("RGB", "L", "I;16", "I;16B", "I;16L", "I", "F"):
                pixels = np.asarray(image)
            elif image.mode == "1":
                pixels = np.asarray(image.convert("L"))
            else:  # P, CMYK, YCbCr, LAB, HSV: show as RGB
                pixels = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError as err:
        raise UnsupportedFormatError(path, "not an image format Pillow can identify") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise CorruptSlideError(path, f"truncated or damaged image ({err})") from err
    pixels = np.ascontiguousarray(pixels)
    return Slide(_metadata(path, fmt, [pixels], None), [pixels])


def _tiff_mpp(page: tifffile.TiffPage, info: dict[str, Any]) -> tuple[float, float] | None:
    if "mpp" in info:
        my, mx = info["mpp"]
        return float(my), float(mx)
    tags = page.tags
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2

    def to_mpp(tag: str) -> float | None:
        num, den = tags[tag].value
        if num == 0 or den == 0:
            return None
        per_unit = num / den  # pixels per unit
        if unit == 3:  # centimetre: the microscopy convention (and OpenSlide's)
            return 1e4 / per_unit
        if unit == 2:  # inch: only believable when it describes a scan, not 72 dpi
            mpp = 25400.0 / per_unit
            return mpp if mpp <= MAX_PLAUSIBLE_MPP else None
        return None

    mx, my = to_mpp("XResolution"), to_mpp("YResolution")
    return (my, mx) if mx and my else None


def _description_info(page: tifffile.TiffPage) -> dict[str, Any]:
    """What our own writer stored in ImageDescription (layer type, mpp), if it wrote it."""
    try:
        info = json.loads(page.description or "{}")
    except json.JSONDecodeError:
        return {}
    return info.get(DESCRIPTION_KEY, {}) if isinstance(info, dict) else {}


def _open_tiff(path: Path) -> Slide:
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            info = _description_info(page)
            mpp = _tiff_mpp(page, info)
            series = tif.series[0]
            shapes = [series.levels[i].shape for i in range(len(series.levels))]
            if info.get("pyramid") and len(tif.pages) > 1:
                shapes = [p.shape for p in tif.pages]  # our separate-page pyramids
            nbytes = int(np.prod(shapes[0])) * series.dtype.itemsize
            eager = nbytes <= EAGER_LIMIT
            levels: list[Any] = [series.asarray()] if eager else []
            photometric = page.photometric
    except tifffile.TiffFileError as err:
        raise CorruptSlideError(path, f"not a readable TIFF ({err})") from err
    except (ValueError, OSError, IndexError) as err:
        raise CorruptSlideError(path, f"truncated or damaged TIFF ({err})") from err
    if not eager:
        levels = [_lazy_tiff_level(path, i, bool(info.get("pyramid"))) for i in range(len(shapes))]
    if eager and levels[0].ndim == 3 and levels[0].shape[-1] == 4 and photometric == 2:
        levels = [_composite_on_white(levels[0])]
    layer_type = info.get("layer_type", "image")
    return Slide(_metadata(path, "tiff", levels, mpp, layer_type), levels)


def _lazy_tiff_level(path: Path, index: int, separate_pages: bool) -> da.Array:
    import zarr

    selector = {"key": index} if separate_pages else {"series": 0, "level": index}
    store = tifffile.imread(path, aszarr=True, **selector)
    return da.from_zarr(zarr.open_array(store, mode="r"))
