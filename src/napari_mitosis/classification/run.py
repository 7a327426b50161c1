"""Patch classification over slides (Camelyon16-style heatmaps) and whole images.

The slide is cut into *cells* of ``stride`` level pixels on a uniform grid; the model sees
a ``patch`` (its card's input size) centred on each cell — plus, for two-tower models, a
same-size patch covering ``context`` × the area at a lower magnification — and its class
probabilities become that cell's heatmap values. WSInfer models (``patching="wsinfer"``)
follow WSInfer's rule instead: level-0 patches of round(input size × their µm/px ÷ the
slide's) pixels, one per cell from the origin, each resized to the input size. Cells with
too little tissue are never sent to the model. Large heatmaps go to lazily allocated
zarr arrays, so memory does not grow with the slide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.classification.heatmap import HeatmapResult
from napari_mitosis.classification.patches import PatchReader, context_level
from napari_mitosis.classification.predictor import ClassifierPredictor
from napari_mitosis.engine.mergers import ScoreGridMerger, lazy_probability
from napari_mitosis.engine.tiled_inference import Progress, TiledRun
from napari_mitosis.engine.tiling import Region, TileGrid, strip_order
from napari_mitosis.engine.tissue import TissueMask, slide_tissue_mask
from napari_mitosis.io.class_folders import centre_crop_of, resize_rgb
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.resampled import resampling_note
from napari_mitosis.io.slide import Slide
from napari_mitosis.models.card import ModelCard
from napari_mitosis.models.checkpoint import load_checkpoint

__all__ = [
    "ClassificationRun",
    "ClassifierPredictor",
    "HeatmapResult",
    "classify_images",
    "classify_slide",
    "patch_px",
]

#: Heatmaps with more cells than this go to a lazily allocated zarr array.
LAZY_CELLS = 4096 * 4096


def patch_px(card: ModelCard, level_mpp: tuple[float, float] | None) -> int:
    """Level pixels the model reads per patch: its input size, or for WSInfer models
    their patch's µm in this level's pixels (WSInfer averages the two axes' µm/px)."""
    if card.patching != "wsinfer" or level_mpp is None:
        return card.input_size
    return card.level0_patch((level_mpp[0] + level_mpp[1]) / 2)


def _grid_storage(shape: tuple[int, ...], cells: int) -> Any:
    return lazy_probability(shape) if cells > LAZY_CELLS else np.zeros(shape, np.float32)


class ClassificationRun(TiledRun):
    """One heatmap, step by step (``steps()`` yields progress, ``result()`` thresholds)."""

    def __init__(
        self,
        source: Any,
        predictor: ClassifierPredictor,
        *,
        stride: int | None = None,
        overlap: int | None = None,
        region: Region | None = None,
        batch_size: int = 16,
        level: int = 0,
        downsample: float = 1.0,
        level_mpp: tuple[float, float] | None = None,
        context_source: Any = None,
        context_scale: float = 1.0,
        out: Any = None,
        device_tiles: bool = False,
    ) -> None:
        card = predictor.card
        outputs = predictor.outputs()
        if (outputs == 1 and len(card.classes) != 2) or (
            outputs > 1 and outputs != len(card.classes)
        ):
            raise ValueError(
                f"the model gives {outputs} output(s) but its card names {len(card.classes)} "
                f"classes {list(card.classes)} (one sigmoid output scores two classes)"
            )
        patch = patch_px(card, level_mpp)
        if stride is None:  # the widgets' "overlap" is patch − stride
            default = patch if card.patching == "wsinfer" else max(patch // 2, 1)
            stride = patch - overlap if overlap is not None else default
        if not 0 < stride <= patch:
            raise ValueError(f"stride must be in (0, {patch}] px, got {stride}")
        height, width = int(source.shape[0]), int(source.shape[1])
        if min(height, width) < patch:
            raise ValueError(
                f"the image at level {level} ({width} × {height} px) is smaller than one "
                f"{patch} px patch; choose a finer level or a smaller model"
            )
        self.source, self.predictor, self.batch_size = source, predictor, batch_size
        self.grid = TileGrid.over(
            source.shape,
            stride,
            0,
            region=region,
            level=level,
            downsample=downsample,
            uniform=True,
        )
        shape = (len(self.grid.rows), len(self.grid.cols))
        cells = shape[0] * shape[1]
        if outputs == 1:  # one sigmoid score per cell: the heatmap itself
            self.heatmap = _grid_storage(shape, cells) if out is None else out
            self.probabilities = None
            grid_out = self.heatmap
        else:  # a probability per class; the heatmap is derived in `result`
            self.probabilities = _grid_storage((outputs, *shape), cells * outputs)
            self.heatmap = out
            grid_out = self.probabilities
        self.merger = ScoreGridMerger(self.grid, grid_out)
        self.origins = self.grid.origins()
        self.level_mpp = level_mpp
        self.patch = patch
        self.read = PatchReader(
            source,
            patch=patch,
            cell=stride,
            context=card.context,
            context_source=context_source,
            context_scale=context_scale,
            fill=0 if card.patching == "wsinfer" else 255,
        )
        if device_tiles:
            self.read_batch = self._device_batches(source, stride)

    def _device_batches(self, source: Any, cell: int) -> Any:
        """Batches decoded and cut on the model's device (`engine.device_tiles`) where the
        level is a TIFF we decode and the model takes plain RGB patches; else None (the
        CPU reads, which also do context patches, stain normalisation and Pillow resizing)."""
        predictor, card = self.predictor, self.predictor.card
        plain = not card.context and card.resize == "bilinear" and predictor.in_channels == 3
        if not plain or predictor.normalise is not None:
            return None
        from napari_mitosis.engine.device_tiles import level_batch_reader

        # each patch centred on its cell, as `PatchReader` places it
        return level_batch_reader(
            source, predictor.device, self.patch, fill=self.read.fill,
            shift=cell / 2 - self.patch / 2,
        )  # fmt: skip

    @property
    def read_px(self) -> int:
        return self.patch

    def visit_order(self) -> np.ndarray:
        """Cells in reading strips (`strip_order`): each cell's score lands in its own place,
        so order is free, and strips decode each slide tile about once."""
        return strip_order(self.origins, self.grid.stride)

    def result(self, threshold: float | None = None) -> HeatmapResult:
        """Two classes: the heatmap thresholded (default: the card's); K > 2 classes: the
        argmax label (k + 1 for ``classes[k]``) and the winning probability."""
        card, visited = self.predictor.card, self.merger.visited
        heatmap = self.heatmap
        if self.probabilities is None:
            scores = np.asarray(heatmap)
        else:
            grids = np.asarray(self.probabilities)
            scores = grids[1] if len(card.classes) == 2 else grids.max(axis=0)
            if heatmap is None:
                heatmap = scores.astype(np.float32)
            else:
                heatmap[...] = scores
        if len(card.classes) == 2:
            threshold = card.threshold if threshold is None else threshold
            mask = ((scores >= threshold) & visited).astype(np.uint8)
        else:
            threshold = None
            mask = np.where(visited, np.asarray(self.probabilities).argmax(axis=0) + 1, 0)
            mask = mask.astype(np.uint8)
        grid = self.grid
        return HeatmapResult(
            heatmap,
            mask,
            visited,
            grid.region,
            grid.level,
            grid.downsample,
            self.level_mpp,
            grid.stride,
            self.patch,
            threshold,
            tuple(card.classes),
            self.probabilities,
        )


def classify_slide(
    path: str | Path | Slide,
    checkpoint: str | Path | ClassifierPredictor,
    *,
    level: int | None = None,
    region: Region | None = None,
    stride: int | None = None,
    device: str = "auto",
    tissue_only: bool = True,
    min_tissue: float = 0.3,
    threshold: float | None = None,
    tta: bool | None = None,
    amp: bool = True,
    batch_size: int = 16,
    out: Any = None,
    tissue: TissueMask | None = None,
    mpp: float | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    device_tiles: bool = False,
) -> HeatmapResult:
    """Tumour heatmap and mask of a slide at the level matching the model's µm/pixel.

    ``region`` is (y0, x0, y1, x1) in level-0 pixels. Only cells holding ``min_tissue``
    tissue reach the model when ``tissue_only`` (``tissue``: a mask already computed).
    A loaded `ClassifierPredictor` may stand for the checkpoint (cohort workers load
    each model once); ``progress(done, total)`` counts patches. ``amp=False``: float32
    on CUDA too (slower; the CPU's heatmap within 1e-4). ``mpp`` is the image's µm/pixel
    when the file does not say. ``device_tiles``: decode JPEG tiles and cut patches on the
    model's device (nvJPEG on a GPU) where the slide allows (`engine.device_tiles`).
    """
    if isinstance(checkpoint, ClassifierPredictor):
        predictor = checkpoint
    else:
        model, card = load_checkpoint(checkpoint, task="classification")
        predictor = ClassifierPredictor(model, card, device, tta=tta, amp=amp)
    card = predictor.card
    slide = path if isinstance(path, Slide) else open_slide(path, mpp=mpp)
    channels = int(card.options.get("in_channels", 3))
    if card.patching == "wsinfer" and level is None:
        level = 0  # WSInfer reads level 0 and resizes
    where = slide.model_level(
        card.mpp, level=level, region=region, channels=channels, tolerance=card.mpp_tolerance
    )
    resampled = where.pop("resampled")
    context_source, context_scale = context_level(
        slide, where["level"], card.context, base=where["downsample"]
    )
    try:
        run = ClassificationRun(
            where.pop("source"),
            predictor,
            stride=stride,
            batch_size=batch_size,
            context_source=context_source,
            context_scale=context_scale,
            out=out,
            device_tiles=device_tiles,
            **where,
        )
    except ValueError as err:  # the run knows the arrays; the file is known here
        raise ValueError(f"{slide.path}: {err}") from None
    if tissue_only:
        run.restrict_to_tissue(tissue or slide_tissue_mask(slide), min_tissue, source=slide.path)
    run.run(progress, should_stop)
    result = run.result(threshold)
    result.resampled, result.note = resampled, resampling_note(resampled, card.mpp)
    return result


def classify_images(
    images: Sequence[np.ndarray], predictor: ClassifierPredictor, *, batch_size: int = 32
) -> np.ndarray:
    """Whole small images (ultrasound frames, IDC patches) → scores, each cropped to the
    card's ``centre_crop`` (if any) and resized to the model's input size."""
    scores = []
    size = predictor.card.input_size
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        crop = predictor.card.centre_crop
        batch = np.stack(
            [resize_rgb(centre_crop_of(np.asarray(i, np.uint8), crop), size) for i in chunk]
        )
        scores.append(predictor(batch))
    return np.concatenate(scores) if scores else np.zeros(0)
