"""An opened slide or image: lazy multiscale levels with physical units and metadata.

`Slide` and `SlideMetadata` are the types every backend returns; `formats.open_slide`
chooses the backend. The backends import this module, never the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np

from napari_mitosis.io.errors import MissingResolutionError, UnsuitableImageError

ColorMode = Literal["raw", "srgb"]
LayerType = Literal["image", "labels"]

#: Models refuse images (at the level they read) narrower than this (px).
MIN_MODEL_SIDE = 16
#: A coarsest level longer than this (px) gets Dask-downsampled levels added for display.
DISPLAY_SIZE = 2048


@dataclass(frozen=True)
class SlideMetadata:
    """What is known about a slide without reading its pixels.

    Dimensions follow OpenSlide's order, ``(width, height)``; arrays are ``(y, x[, c])``.
    """

    path: str
    vendor: str
    mpp: tuple[float, float] | None  # (y, x) µm per level-0 pixel; None when unknown
    objective_power: float | None
    level_dimensions: tuple[tuple[int, int], ...]  # native levels only
    level_downsamples: tuple[float, ...]
    tile_sizes: tuple[tuple[int, int], ...]  # (width, height) per native level
    background_rgb: tuple[int, int, int] = (255, 255, 255)
    associated_images: tuple[str, ...] = ()
    color: ColorMode = "raw"
    color_profile: str | None = None  # description of the embedded ICC profile, if any
    layer_type: LayerType = "image"
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def synthetic(self) -> bool:
        """Written by our synthetic-sample writer (its TIFF description says so)."""
        return is_synthetic(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy (napari layer metadata, run records)."""
        out = asdict(self)
        out["properties"] = dict(self.properties)
        return out


def is_synthetic(metadata: Mapping[str, Any]) -> bool:
    """Whether slide metadata (`SlideMetadata.as_dict`, napari layer metadata) is of a
    synthetic sample: our writer records ``"synthetic": true`` in the TIFF description."""
    description = (metadata.get("properties") or {}).get("tiff.ImageDescription", "")
    return '"synthetic": true' in description


@dataclass
class Slide:
    """A slide opened lazily: ``levels[0]`` is full resolution, each next level coarser.

    ``levels`` may hold more entries than the slide's native levels: single-level slides
    larger than a screen get Dask-downsampled levels so viewers stay responsive.
    """

    metadata: SlideMetadata
    levels: list[Any]  # da.Array, or np.ndarray for small plain images held in memory
    #: The same pyramid as direct array-likes for the tiled engine: reads with no Dask
    #: graph at all. Defaults to ``levels`` where there is nothing to gain (plain images).
    sources: list[Any] = field(default_factory=list)
    _closer: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.sources:
            self.sources = list(self.levels)

    @property
    def path(self) -> Path:
        return Path(self.metadata.path)

    @property
    def mpp(self) -> tuple[float, float] | None:
        """(y, x) µm per level-0 pixel, or None when the file does not say."""
        return self.metadata.mpp

    @property
    def rgb(self) -> bool:
        data = self.levels[0]
        return data.ndim == 3 and data.shape[-1] in (3, 4)

    @property
    def multiscale(self) -> bool:
        return len(self.levels) > 1

    def level_downsample(self, level: int) -> tuple[float, float]:
        """(y, x) downsample of ``levels[level]`` relative to level 0, from the shapes."""
        h0, w0 = self.levels[0].shape[:2]
        h, w = self.levels[level].shape[:2]
        return h0 / h, w0 / w

    def level_mpp(self, level: int) -> tuple[float, float] | None:
        """(y, x) µm per pixel of ``levels[level]``."""
        if self.mpp is None:
            return None
        dy, dx = self.level_downsample(level)
        return self.mpp[0] * dy, self.mpp[1] * dx

    def level_for_mpp(self, target_mpp: float | None) -> int:
        """The level whose µm/pixel is closest (in ratio) to ``target_mpp`` (0 if unknown)."""
        if target_mpp is None or self.mpp is None:
            return 0
        errors = [abs(math.log(self.level_mpp(i)[1] / target_mpp)) for i in range(len(self.levels))]
        return int(np.argmin(errors))

    def region_at_level(
        self, region: tuple[int, int, int, int] | None, level: int
    ) -> tuple[int, int, int, int] | None:
        """A level-0 (y0, x0, y1, x1) region in ``levels[level]`` pixels (outward rounding).

        A region reaching past the slide is cut to it; one that is empty or wholly outside
        is an error naming the file, in the level-0 pixels the user gave."""
        return _region_in(
            region,
            self.levels[level].shape,
            self.level_downsample(level),
            self.path,
            self.levels[0].shape,
        )

    def model_level(
        self,
        target_mpp: float | None,
        *,
        level: int | None = None,
        region: tuple[int, int, int, int] | None = None,
        channels: int = 3,
        tolerance: float = 0.1,
    ) -> dict[str, Any]:
        """Where a model runs: the level closest to its µm/pixel (or ``level``), the level-0
        ``region`` in that level's pixels, and the level's downsample and µm/pixel — the
        keyword arguments every tiled run takes, plus ``source`` (the level's array) and
        ``resampled`` (source pixels per model pixel; 1 when read as it is).

        When no level lies within ``tolerance`` (relative) of ``target_mpp``, the model
        reads a `ResampledLevel` at its own µm/px: made from the coarsest level at least as
        fine as it (downsampled), or from level 0 (upsampled) when none is — as TIAToolbox
        reads at a requested resolution. An explicit ``level`` is read as it is.
        ``channels``: what the model reads (3 RGB; 1 grey, which takes RGB too)."""
        self.check_model_input(channels=channels)
        if target_mpp is not None and self.mpp is None and level is None:
            raise MissingResolutionError(
                self.path,
                f"does not say its µm/pixel, and the model reads {target_mpp:g} µm/px: give "
                "the slide's with --mpp (command line), mpp= (Python) or the µm/px field "
                "(napari widgets)",
            )
        factor = 1.0
        if level is None and (target_mpp is None or self.mpp is None):
            level = 0
        elif level is None:
            from napari_mitosis.io.resampled import model_scale

            level_mpps = [self.level_mpp(i)[1] for i in range(len(self.levels))]
            level, factor = model_scale(level_mpps, target_mpp, tolerance)
        self.check_model_input(level, channels=channels)
        source = self.sources[level]
        dy, dx = self.level_downsample(level)
        level_mpp = self.level_mpp(level)
        if factor != 1.0:
            from napari_mitosis.io.resampled import ResampledLevel

            source = ResampledLevel(source, factor)
            dy, dx = dy * factor, dx * factor
            level_mpp = (level_mpp[0] * factor, level_mpp[1] * factor)
        return {
            "source": source,
            "region": _region_in(region, source.shape, (dy, dx), self.path, self.levels[0].shape),
            "level": level,
            "downsample": dx,
            "level_mpp": level_mpp,
            "resampled": factor,
        }

    def check_model_input(self, level: int = 0, *, channels: int = 3) -> None:
        """Models read 8-bit images of at least `MIN_MODEL_SIDE` px a side, RGB (a grey
        model, ``channels=1``, takes grey or RGB); anything else is refused by name, never
        run silently (scaling 16-bit or float values to 8 bits has no rule every scanner
        shares)."""
        data = self.levels[0]
        has = data.shape[-1] if data.ndim == 3 else 1
        fits = has == 3 or (channels == 1 and has == 1)
        if data.dtype != np.uint8 or not fits:
            kind = {1: "grey", 3: "RGB", 4: "RGBA"}.get(has, f"{has}-channel")
            bits = data.dtype.itemsize * 8
            depth = f"{bits}-bit" if data.dtype.kind in "ui" else str(data.dtype)
            wanted = "8-bit grey or RGB" if channels == 1 else "8-bit RGB"
            raise UnsuitableImageError(
                self.path,
                f"has {depth} {kind} pixels; the model reads {wanted} images (convert it, "
                "e.g. to an 8-bit RGB TIFF, first)",
            )
        height, width = self.levels[level].shape[:2]
        if min(height, width) < MIN_MODEL_SIDE:
            raise UnsuitableImageError(
                self.path,
                f"is {width} × {height} px at level {level}: too small for a model (at "
                f"least {MIN_MODEL_SIDE} px a side)",
            )

    def scale(self) -> tuple[float, float]:
        """Level-0 layer scale: µm per pixel when known, else 1 (pixel units)."""
        return self.mpp if self.mpp is not None else (1.0, 1.0)

    def units(self) -> tuple[str, str]:
        return ("micrometer", "micrometer") if self.mpp is not None else ("pixel", "pixel")

    def read_region(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """Pixels of ``levels[level]`` at (y, x) in that level's coordinates."""
        region = self.levels[level][y : y + height, x : x + width]
        return np.asarray(region.compute() if isinstance(region, da.Array) else region)

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (label, macro, thumbnail) as RGB; read on request only."""
        if name not in self.metadata.associated_images:
            raise KeyError(
                f"{self.path}: no associated image {name!r}; "
                f"it has {list(self.metadata.associated_images)}"
            )
        return self._closer.associated_image(name)

    def summary(self) -> str:
        """A few human-readable lines about the slide."""
        m = self.metadata
        mpp = f"{m.mpp[1]:.4g} × {m.mpp[0]:.4g} µm/px" if m.mpp else "unknown (pixel units)"
        lines = [
            f"{m.path}",
            f"  vendor: {m.vendor}   objective: {m.objective_power or 'unknown'}   mpp: {mpp}",
            f"  colour: {m.color}" + (f" (ICC: {m.color_profile})" if m.color_profile else ""),
        ]
        for i, arr in enumerate(self.levels):
            native = i < len(m.level_dimensions)
            kind = "native" if native else "derived"
            dy, _ = self.level_downsample(i)
            lines.append(f"  level {i}: {arr.shape[1]} × {arr.shape[0]} px  ×{dy:.4g}  ({kind})")
        if m.associated_images:
            lines.append(f"  associated images: {', '.join(m.associated_images)}")
        return "\n".join(lines)

    def close(self) -> None:
        if self._closer is not None:
            self._closer.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def display_levels(
    levels: Sequence[Any], display_size: int, *, labels: bool = False
) -> list[da.Array]:
    """Extra ×2 levels under the coarsest one until it fits ``display_size``.

    Only lazy (Dask) levels get them: an in-memory image is small enough to show as is.
    Images average 2×2 blocks; labels take every second pixel so no new label appears.
    """
    coarsest = levels[-1]
    extra: list[da.Array] = []
    if not isinstance(coarsest, da.Array):
        return extra
    while max(coarsest.shape[:2]) > display_size:
        if labels:
            coarsest = coarsest[::2, ::2]
        else:
            axes = {0: 2, 1: 2}
            coarsest = da.coarsen(np.mean, coarsest, axes, trim_excess=True)
            coarsest = da.round(coarsest).astype(levels[0].dtype)
        coarsest = coarsest.rechunk(levels[0].chunksize)
        extra.append(coarsest)
    return extra


def _region_in(
    region: tuple[int, int, int, int] | None,
    shape: tuple[int, ...],
    downsample: tuple[float, float],
    path: Path,
    shape0: tuple[int, ...],
) -> tuple[int, int, int, int] | None:
    """A level-0 region in the pixels of a level ``downsample`` coarser (outward rounding,
    cut to the level's ``shape``); an empty or outside one names ``path``."""
    if region is None:
        return None
    y0, x0, y1, x1 = region
    height, width = shape0[:2]
    if not (y0 < y1 and x0 < x1 and y1 > 0 and x1 > 0 and y0 < height and x0 < width):
        raise ValueError(
            f"{path}: region y0,x0,y1,x1 = {y0},{x0},{y1},{x1} (level-0 px) is empty "
            f"or outside the slide, which is {width} × {height} px at level 0"
        )
    dy, dx = downsample
    return (
        int(y0 / dy),
        int(x0 / dx),
        min(math.ceil(y1 / dy), int(shape[0])),
        min(math.ceil(x1 / dx), int(shape[1])),
    )
