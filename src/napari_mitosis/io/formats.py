"""Which backend opens which file: `open_slide`, the one entry point for pixels.

Scripts, the CLI, Dask workers and the napari reader all open slides here. Opening never
reads pixels: every level is a Dask array (or, for small plain images, a NumPy array) whose
chunks are the slide's own tiles.
"""

from __future__ import annotations

from pathlib import Path

from napari_mitosis.io import openslide_source, plain_image
from napari_mitosis.io.errors import CorruptSlideError, SlideNotFoundError, UnsupportedFormatError
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
)
#: Extensions read as plain (single-resolution) images.
PLAIN_IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Everything `open_slide` accepts.
SUPPORTED_SUFFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(OPENSLIDE_SUFFIXES + PLAIN_IMAGE_SUFFIXES)
)


def open_slide(
    path: str | Path, *, color: ColorMode = "raw", display_size: int = DISPLAY_SIZE
) -> Slide:
    """Open a whole-slide image or a plain image lazily, without reading its pixels.

    ``color="srgb"`` applies the slide's embedded ICC profile (when it has one) on read;
    the default ``"raw"`` gives the pixels as stored, like OpenSlide.
    """
    path = Path(path)
    if color not in ("raw", "srgb"):
        raise ValueError(f"color must be 'raw' or 'srgb', not {color!r}")
    if not path.exists():
        raise SlideNotFoundError(path, "no such file")
    if path.is_dir():
        raise SlideNotFoundError(path, "is a directory, not a slide or image file")
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
    elif _has_tiff_header(path):
        raise CorruptSlideError(
            path, "a TIFF-based slide that OpenSlide cannot open: truncated or damaged"
        )
    else:
        raise UnsupportedFormatError(path, "OpenSlide does not recognise this file as a slide")
    extra = display_levels(slide.levels, display_size, labels=slide.metadata.layer_type == "labels")
    slide.levels.extend(extra)
    slide.sources.extend(extra)
    return slide


def _has_tiff_header(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
