"""Mitosis detection on images and slides: tiles over the region (or tissue) → boxes in
level-0 pixels, merged across tile borders. Scripts, the CLI and widgets call this."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.engine.mergers import TileBoxMerger
from napari_mitosis.engine.tiled_inference import Progress, TiledRun
from napari_mitosis.engine.tiling import Region, TileGrid
from napari_mitosis.engine.tissue import TissueMask, slide_tissue_mask
from napari_mitosis.io.detections import Detections
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.resampled import resampling_note
from napari_mitosis.io.slide import Slide
from napari_mitosis.models.checkpoint import load_checkpoint
from napari_mitosis.models.detector import DetectionPredictor

#: One high-power field (mm²), as in MIDOG/TUPAC; mitotic counts are per 10 of them.
HPF_MM2 = 0.237


class DetectionRun(TiledRun):
    """One detection, step by step (``steps()`` yields progress, ``result()`` merges)."""

    def __init__(
        self,
        source: Any,
        predictor: DetectionPredictor,
        *,
        overlap: int = 64,
        region: Region | None = None,
        batch_size: int = 4,
        level: int = 0,
        downsample: float = 1.0,
        level_mpp: tuple[float, float] | None = None,
        device_tiles: bool = False,
    ) -> None:
        if len(source.shape) != 3 or source.shape[2] != 3:
            raise ValueError(f"the detector needs an RGB image; got shape {tuple(source.shape)}")
        tile = getattr(predictor, "tile", None) or predictor.card.input_size
        self.source, self.predictor, self.batch_size = source, predictor, batch_size
        self.grid = TileGrid.over(
            source.shape, tile, overlap, region=region, level=level, downsample=downsample
        )
        self.merger = TileBoxMerger(
            self.grid, overlap=overlap, class_names=tuple(predictor.card.classes)
        )
        self.origins = self.grid.origins()
        if device_tiles and predictor.normalise is None:
            from napari_mitosis.engine.device_tiles import level_batch_reader

            self.read_batch = level_batch_reader(source, predictor.device, tile, fill=0)
        self.mpp0 = (level_mpp[0] / downsample, level_mpp[1] / downsample) if level_mpp else None

    def area_mm2(self) -> float | None:
        """The analysed area (region or tissue in it) in mm², when µm/pixel is known."""
        if self.mpp0 is None:
            return None
        return self.area_level0_px() * self.mpp0[0] * self.mpp0[1] / 1e6

    def result(self, score_threshold: float | None = None) -> Detections:
        found = self.merger.finish(self.mpp0)
        threshold = self.predictor.card.threshold if score_threshold is None else score_threshold
        return found.subset(found.scores >= threshold)


@dataclass
class DetectionResult:
    """Boxes in level-0 pixels and what they were found in (for densities and reports)."""

    detections: Detections
    level: int
    area_mm2: float | None  # analysed region (or its tissue); None without µm/pixel
    tiles: int  # tiles sent to the model
    hotspot: dict[str, float] | None = None  # `densest_area` of the analysed mask
    resampled: float = 1.0  # slide pixels per model pixel (< 1: upsampled; `io.resampled`)
    note: str = ""  # `resampling_note`: what the model saw, when not the slide's own pixels
    #: Candidate classifiers' model and threshold per probability column (`subtype`).
    candidate_models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def density(self) -> dict[str, float] | None:
        """Count, mitoses per mm² and per 10 HPF (None when the area is unknown or empty)."""
        if not self.area_mm2:
            return None
        return mitotic_density(len(self.detections), self.area_mm2)

    def summary(self) -> str:
        density = self.density()
        text = f"{len(self.detections)} mitoses at level {self.level} ({self.tiles} tiles)"
        if density is not None:
            text += (
                f" in {density['area_mm2']:.3f} mm²: {density['per_mm2']:.1f} per mm², "
                f"{density['per_10_hpf']:.1f} per 10 HPF"
            )
        if self.hotspot is not None:
            text += f"; densest 10 HPF: {self.hotspot['per_10_hpf']:.1f}"
        if self.note:
            text += f" ({self.note})"
        return text


def detect_array(
    image: np.ndarray,
    predictor: DetectionPredictor,
    *,
    overlap: int = 64,
    batch_size: int = 4,
    mpp: tuple[float, float] | None = None,
    score_threshold: float | None = None,
) -> Detections:
    """Tiled detection over an in-memory image (validation, evaluation and scripts)."""
    run = DetectionRun(image, predictor, overlap=overlap, batch_size=batch_size, level_mpp=mpp)
    run.run()
    return run.result(score_threshold)


def detect_slide(
    path: str | Path | Slide,
    checkpoint: str | Path | DetectionPredictor,
    *,
    level: int | None = None,
    region: Region | None = None,
    device: str = "auto",
    tissue_only: bool = False,
    within: TissueMask | None = None,
    min_tissue: float = 0.05,
    score_threshold: float | None = None,
    tile: int | None = None,
    mpp: float | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> DetectionResult:
    """Detect mitoses in a slide or image at the level matching the model's µm/pixel.

    ``region`` is (y0, x0, y1, x1) in level-0 pixels; boxes come back in level-0 pixels.
    ``score_threshold`` defaults to the model card's (F1-optimal on its validation set).
    ``within`` (e.g. a tumour mask; ``tissue_only`` means the tissue mask) limits the run
    to tiles holding ``min_tissue`` of it and keeps only boxes centred inside it; the
    densities are then per mm² of it. ``tile`` (px) defaults to the model's training crop.
    A loaded `DetectionPredictor` may stand for the checkpoint (its tile is used);
    ``progress(done, total)`` counts tiles; ``mpp`` is the image's µm/pixel when the file
    does not say.
    """
    if isinstance(checkpoint, DetectionPredictor):
        predictor = checkpoint
    else:
        model, card = load_checkpoint(checkpoint, task="detection")
        predictor = DetectionPredictor(model, card, device, tile=tile)
    slide = path if isinstance(path, Slide) else open_slide(path, mpp=mpp)
    card = predictor.card
    where = slide.model_level(card.mpp, level=level, region=region, tolerance=card.mpp_tolerance)
    resampled = where.pop("resampled")
    run = DetectionRun(where.pop("source"), predictor, **where, **options)
    if tissue_only and within is None:
        within = slide_tissue_mask(slide)
    if within is not None:
        run.restrict_to_tissue(within, min_tissue, source=slide.path)
    run.run(progress, should_stop)
    found = run.result(score_threshold)
    hotspot = None
    if within is not None:
        found = found.subset(inside_mask(found.centres, within))
        if run.mpp0 is not None:
            hotspot = densest_area(found.centres, within, run.mpp0)
    return DetectionResult(
        found,
        where["level"],
        run.area_mm2(),
        len(run.origins),
        hotspot,
        resampled,
        resampling_note(resampled, card.mpp),
    )


def inside_mask(centres_yx: np.ndarray, mask: TissueMask) -> np.ndarray:
    """Which level-0 points fall inside ``mask`` (points off its edge do not)."""
    rows = np.floor(centres_yx[:, 0] / mask.downsample[0]).astype(int)
    cols = np.floor(centres_yx[:, 1] / mask.downsample[1]).astype(int)
    ok = (rows >= 0) & (cols >= 0) & (rows < mask.mask.shape[0]) & (cols < mask.mask.shape[1])
    keep = np.zeros(len(centres_yx), bool)
    keep[ok] = mask.mask[rows[ok], cols[ok]]
    return keep


def densest_area(
    centres_yx: np.ndarray,
    mask: TissueMask,
    mpp0: tuple[float, float],
    *,
    fields: int = 10,
    hpf_mm2: float = HPF_MM2,
) -> dict[str, float] | None:
    """The hotspot: the square of ``fields`` HPF (2.37 mm²) with the most mitoses per mm²
    of analysed area, as pathologists count mitoses in the densest 10 HPF.

    Windows lie inside the image, centred on each cell of ``mask``; only those whose
    analysed area is at least half of min(window, whole analysed area) compete, so a sliver
    of tissue with one mitosis is not a hotspot. Smaller images are one window.
    Returns the window's count, area, per mm² and per 10 HPF, and its level-0 centre;
    None if nothing was analysed.
    """
    from napari_mitosis.detection.grading import HotspotFinder

    finder = HotspotFinder(mask, mpp0, hpf_mm2=hpf_mm2, fields=fields, coarsen=False)
    return finder.find(centres_yx)


def detect_hotspot(
    slide: Slide, checkpoint: str | Path | DetectionPredictor, **options: Any
) -> tuple[tuple[int, int, int, int], DetectionResult]:
    """A (fast) detector over the slide's tissue, and the level-0 region of the 10-HPF
    square where its candidates are densest: where a slow model need only run.
    ``options`` go to `detect_slide`. An error names the slide when there is no hotspot."""
    if slide.mpp is None:
        raise ValueError(f"{slide.path}: a hotspot needs the slide's µm/pixel (give --mpp)")
    found = detect_slide(slide, checkpoint, tissue_only=True, **options)
    if found.hotspot is None:
        raise ValueError(f"{slide.path}: {checkpoint} analysed no tissue: no hotspot")
    return hotspot_region(found.hotspot, slide.mpp, slide.levels[0].shape), found


def hotspot_region(
    hotspot: dict[str, float],
    mpp0: tuple[float, float],
    shape: tuple[int, ...],
    *,
    fields: int = 10,
    hpf_mm2: float = HPF_MM2,
) -> tuple[int, int, int, int]:
    """The level-0 region (y0, x0, y1, x1) of a hotspot: the square of ``fields`` HPF
    around its centre, moved inside the image (cut to it when the image is smaller)."""
    side_um = (fields * hpf_mm2) ** 0.5 * 1000.0
    out = []
    for centre, mpp, size in ((hotspot["centre_y"], mpp0[0], shape[0]),
                              (hotspot["centre_x"], mpp0[1], shape[1])):  # fmt: skip
        side = min(round(side_um / mpp), int(size))
        start = min(max(round(centre - side / 2), 0), int(size) - side)
        out.append((start, start + side))
    (y0, y1), (x0, x1) = out
    return y0, x0, y1, x1


def mitotic_density(count: int, area_mm2: float, *, hpf_mm2: float = HPF_MM2) -> dict[str, float]:
    """Mitoses per mm² and per 10 high-power fields (default HPF 0.237 mm², as in MIDOG/TUPAC)."""
    if area_mm2 <= 0:
        raise ValueError(f"area must be positive, got {area_mm2} mm²")
    per_mm2 = count / area_mm2
    return {
        "count": float(count),
        "area_mm2": area_mm2,
        "per_mm2": per_mm2,
        "per_10_hpf": per_mm2 * 10 * hpf_mm2,
    }
