"""Mitosis detection on images and slides: tiles over the region (or tissue) → boxes in
level-0 pixels, merged across tile borders. Scripts, the CLI and widgets call this."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.checkpoint import load_checkpoint
from napari_mitosis.detections import Detections
from napari_mitosis.detector import DetectionPredictor, TileBoxMerger
from napari_mitosis.segmentation import Region
from napari_mitosis.slide import open_slide
from napari_mitosis.tiled_inference import TiledRun
from napari_mitosis.tiling import TileGrid
from napari_mitosis.tissue import slide_tissue_mask


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
    ) -> None:
        if len(source.shape) != 3 or source.shape[2] != 3:
            raise ValueError(f"the detector needs an RGB image; got shape {tuple(source.shape)}")
        tile = predictor.card.input_size
        self.source, self.predictor, self.batch_size = source, predictor, batch_size
        self.grid = TileGrid.over(
            source.shape, tile, overlap, region=region, level=level, downsample=downsample
        )
        self.merger = TileBoxMerger(
            self.grid, overlap=overlap, class_names=tuple(predictor.card.classes)
        )
        self.origins = self.grid.origins()
        self.mpp0 = (level_mpp[0] / downsample, level_mpp[1] / downsample) if level_mpp else None

    def area_mm2(self) -> float | None:
        """The analysed area (region or tissue in it) in mm², when µm/pixel is known."""
        if self.mpp0 is None:
            return None
        return self.area_level0_px() * self.mpp0[0] * self.mpp0[1] / 1e6

    def result(self, score_threshold: float | None = None) -> Detections:
        found = self.merger.finish(self.mpp0)
        threshold = self.predictor.card.threshold if score_threshold is None else score_threshold
        keep = found.scores >= threshold
        return Detections(
            found.boxes[keep],
            found.scores[keep],
            [c for c, k in zip(found.classes, keep, strict=True) if k],
            found.mpp,
        )


@dataclass
class DetectionResult:
    """Boxes in level-0 pixels and what they were found in (for densities and reports)."""

    detections: Detections
    level: int
    area_mm2: float | None  # analysed region (or its tissue); None without µm/pixel
    tiles: int  # tiles sent to the model

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
    path: str | Path,
    checkpoint: str | Path,
    *,
    level: int | None = None,
    region: Region | None = None,
    device: str = "auto",
    tissue_only: bool = False,
    min_tissue: float = 0.05,
    score_threshold: float | None = None,
    **options: Any,
) -> DetectionResult:
    """Detect mitoses in a slide or image at the level matching the model's µm/pixel.

    ``region`` is (y0, x0, y1, x1) in level-0 pixels; boxes come back in level-0 pixels.
    ``score_threshold`` defaults to the model card's (F1-optimal on its validation set).
    """
    model, card = load_checkpoint(checkpoint, task="detection")
    predictor = DetectionPredictor(model, card, device)
    slide = open_slide(path)
    where = slide.model_level(card.mpp, level=level, region=region)
    run = DetectionRun(where.pop("source"), predictor, **where, **options)
    if tissue_only:
        run.restrict_to_tissue(slide_tissue_mask(slide), min_tissue)
    run.run()
    return DetectionResult(
        run.result(score_threshold), where["level"], run.area_mm2(), len(run.origins)
    )


def mitotic_density(count: int, area_mm2: float, *, hpf_mm2: float = 0.237) -> dict[str, float]:
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
