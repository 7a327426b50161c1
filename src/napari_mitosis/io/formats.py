"""Which backend opens which file: `open_slide`, the one entry point for pixels.

Scripts, the CLI, Dask workers and the napari reader all open slides here. Opening never
reads pixels: every level is a Dask array (or, for small plain images, a NumPy array) whose
chunks are the slide's own tiles.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path

import numpy as np

from napari_mitosis.io import openslide_source, plain_image
from napari_mitosis.io.errors import (
    CorruptSlideError,
    SlideNotFoundError,
    UnreadableFileError,
    UnsupportedFormatError,
)
from napari_mitosis.io.slide import DISPLAY_SIZE, ColorMode, Slide, display_levels

#: Extensions OpenSlide reads (``.tif``/``.tiff`` may also be plain images).
OPENSLIDE_SUFFIXES: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".vms",
    ".vmu",
    ".svslide",
    ".bif",
    ".dcm",  # DICOM WSI: any file of the series; a series folder opens too
)
#: Extensions read as plain (single-resolution) images.
PLAIN_IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Everything `open_slide` accepts.
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(OPENSLIDE_SUFFIXES + PLAIN_IMAGE_SUFFIXES)
)


def open_slide(
    path: str | Path,
    *,
    color: ColorMode = "raw",
    mpp: float | tuple[float, float] | None = None,
    display_size: int = DISPLAY_SIZE,
) -> Slide:
    """Open a whole-slide image or a plain image lazily, without reading its pixels.

    ``color="srgb"`` applies the slide's embedded ICC profile (when it has one) on read;
    the default ``"raw"`` gives the pixels as stored, like OpenSlide. ``mpp`` (µm per
    level-0 pixel, one value or (y, x)) is used only when the file does not say; a file
    that says otherwise keeps its own, with a warning naming both.
    """
    path = Path(path)
    if color not in ("raw", "srgb"):
        raise ValueError(f"color must be 'raw' or 'srgb', not {color!r}")
    if not path.exists():
        raise SlideNotFoundError(path, "no such file")
    if path.is_dir():
        path = dicom_series_file(path)
    _check_readable(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise UnsupportedFormatError(
            path,
            f"unsupported extension {suffix!r}; "
            f"napari-mitosis reads {', '.join(SUPPORTED_SUFFIXES)}",
        )
    if suffix in OPENSLIDE_SUFFIXES and openslide_source.is_openslide_slide(path):
        slide = openslide_source.open_openslide(path, color=color)
    elif suffix in PLAIN_IMAGE_SUFFIXES:
        slide = plain_image.open_plain_image(path)
    elif is_dicom(path):
        raise CorruptSlideError(
            path,
            "a DICOM file OpenSlide cannot open as a whole-slide image: not a VL Whole Slide "
            "Microscopy image, or its series is incomplete or damaged",
        )
    elif _has_tiff_header(path):
        raise CorruptSlideError(
            path, "a TIFF-based slide that OpenSlide cannot open: truncated or damaged"
        )
    else:
        raise UnsupportedFormatError(path, "OpenSlide does not recognise this file as a slide")
    if mpp is not None:
        slide = with_resolution(slide, mpp)
    extra = display_levels(slide.levels, display_size, labels=slide.metadata.layer_type == "labels")
    slide.levels.extend(extra)
    slide.sources.extend(extra)
    return slide


def with_resolution(slide: Slide, mpp: float | tuple[float, float]) -> Slide:
    """``slide`` with µm/pixel ``mpp`` when it has none; its own (and a warning) otherwise."""
    given = (float(mpp), float(mpp)) if np.isscalar(mpp) else tuple(map(float, mpp))  # type: ignore[arg-type]
    if len(given) != 2 or not all(math.isfinite(v) and v > 0 for v in given):
        raise ValueError(f"{slide.path}: µm/pixel must be one or two positive numbers, not {mpp!r}")
    own = slide.metadata.mpp
    if own is None:
        slide.metadata = dataclasses.replace(slide.metadata, mpp=given)
    elif not np.allclose(own, given, rtol=0.01):
        warnings.warn(
            f"{slide.path}: the slide says {own[1]:g} µm/px; the {given[1]:g} µm/px given is "
            "used only for slides that do not say, so the slide's own is kept",
            stacklevel=3,
        )
    return slide


def _check_readable(path: Path) -> None:
    """Errors for files no backend could read, said plainly before any backend tries."""
    try:
        with path.open("rb") as handle:
            empty = not handle.read(1)
    except PermissionError:
        raise UnreadableFileError(path, "permission denied (this user may not read it)") from None
    except OSError as err:
        raise CorruptSlideError(path, f"cannot be read ({err.strerror or err})") from None
    if empty:
        raise CorruptSlideError(path, "is empty (0 bytes)")


def dicom_series_file(folder: Path) -> Path:
    """The file OpenSlide opens for a DICOM WSI series folder (any of its instances will do;
    the first by name, so the choice is stable)."""
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom(p))
    except PermissionError:
        raise UnreadableFileError(folder, "permission denied (this user may not list it)") from None
    if not files:
        raise SlideNotFoundError(
            folder, "is a directory without DICOM files, not a slide or image file"
        )
    return files[0]


def is_dicom(path: Path) -> bool:
    """A DICOM file: the ``DICM`` magic after the 128-byte preamble (any extension)."""
    try:
        with path.open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _has_tiff_header(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
