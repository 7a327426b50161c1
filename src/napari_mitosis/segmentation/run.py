"""Mitosis segmentation with a U-Net: image or slide region → probability, labels, boxes.

Scripts, the CLI and the napari widget all call `segment_array` / `segment_slide`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from skimage.measure import label

from napari_mitosis.engine.components import label_components
from napari_mitosis.engine.mergers import BlendedStitcher, lazy_probability
from napari_mitosis.engine.tiled_inference import Progress, TiledRun, TilePredictor
from napari_mitosis.engine.tiling import Region, TileGrid
from napari_mitosis.engine.tissue import slide_tissue_mask
from napari_mitosis.io.detections import Detections, boxes_from_labels
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.resampled import resampling_note
from napari_mitosis.models.checkpoint import ModelCard, load_checkpoint

#: Regions larger than this (pixels) are segmented into lazily allocated zarr arrays.
LAZY_ABOVE = 4096 * 4096


@dataclass
class SegmentationResult:
    """Outputs over ``region`` of pyramid ``level``; boxes are in level-0 pixels."""

    probability: Any  # (h, w) float32: NumPy or a lazily allocated zarr array
    labels: Any  # (h, w) uint32 NumPy or zarr, one label per mitotic figure
    detections: Detections
    region: Region
    level: int
    downsample: float
    level_mpp: tuple[float, float] | None
    resampled: float = 1.0  # slide pixels per model pixel (< 1: upsampled; `io.resampled`)
    note: str = ""  # `resampling_note`: what the model saw, when not the slide's own pixels


class SegmentationRun(TiledRun):
    """One segmentation, step by step: ``steps()`` yields progress, ``result()`` finishes.

    `segment_array` runs it to the end; the napari widget drives ``steps()`` from a
    ``thread_worker`` so it can show progress and stop between batches.
    """

    def __init__(
        self,
        source: Any,
        predictor: TilePredictor,
        *,
        tile: int | None = None,
        overlap: int = 64,
        region: Region | None = None,
        batch_size: int = 4,
        level: int = 0,
        downsample: float = 1.0,
        level_mpp: tuple[float, float] | None = None,
        out: Any = None,
        device_tiles: bool = False,
    ) -> None:
        card = predictor.card
        tile = tile or card.input_size
        factor = 2 ** int(card.options.get("depth", 4))
        if tile % factor:
            raise ValueError(f"tile must be a multiple of {factor} for this U-Net, got {tile}")
        channels = source.shape[2] if len(source.shape) == 3 else 1
        expected = int(card.options.get("in_channels", 3))
        if channels != expected:
            kind = {1: "a greyscale", 4: "an RGBA"}.get(channels, f"a {channels}-channel")
            raise ValueError(f"the model expects {expected}-channel images; this is {kind} image")
        self.source, self.predictor, self.batch_size = source, predictor, batch_size
        self.level, self.downsample, self.level_mpp = level, downsample, level_mpp
        self.grid = TileGrid.over(
            source.shape, tile, overlap, region=region, level=level, downsample=downsample
        )
        y0, x0, y1, x1 = self.grid.region
        out = out if out is not None else np.zeros((y1 - y0, x1 - x0), np.float32)
        self.stitcher = self.merger = BlendedStitcher(self.grid, out, overlap=overlap)
        self.origins = self.grid.origins()
        if device_tiles and channels == 3 and predictor.normalise is None:
            from napari_mitosis.engine.device_tiles import level_batch_reader

            self.read_batch = level_batch_reader(source, predictor.device, tile, fill=0)

    def result(
        self, threshold: float | None = None, min_area: int = 0, labels_out: Any = None
    ) -> SegmentationResult:
        probability = self.stitcher.finish()
        threshold = self.predictor.card.threshold if threshold is None else threshold
        # Labelled band by band: a zarr probability map is never loaded whole.
        found = label_components(probability, threshold, out=labels_out)
        keep = found.areas >= min_area
        # Boxes: region-relative level pixels → level-0 pixels of the whole image.
        y0, x0 = self.grid.region[:2]
        boxes = (found.boxes[keep] + np.array([x0, y0, x0, y0], float)) * self.downsample
        scores = found.peaks[keep]
        labels = found.labels
        mpp = self.level_mpp
        mpp0 = (mpp[0] / self.downsample, mpp[1] / self.downsample) if mpp else None
        return SegmentationResult(
            probability,
            labels,
            Detections(boxes, scores, mpp=mpp0),
            self.grid.region,
            self.level,
            self.downsample,
            mpp,
        )


def segment_array(
    source: Any,
    predictor: TilePredictor,
    *,
    threshold: float | None = None,
    min_area: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> SegmentationResult:
    """Segment an (y, x, c) array-like (NumPy, Dask, a slide level) tile by tile.

    ``options`` are `SegmentationRun`'s (tile, overlap, region, batch_size, level, …).
    """
    run = SegmentationRun(source, predictor, **options)
    run.run(progress, should_stop)
    return run.result(threshold, min_area)


def segment_slide(
    path: str | Path,
    checkpoint: str | Path,
    *,
    level: int | None = None,
    region: Region | None = None,
    device: str = "auto",
    tissue_only: bool = False,
    min_tissue: float = 0.05,
    mpp: float | None = None,
    **options: Any,
) -> SegmentationResult:
    """Open a slide or image and segment it at the level matching the model's µm/pixel.

    ``region`` is (y0, x0, y1, x1) in level-0 pixels (default: the whole image);
    ``tissue_only`` skips tiles with less than ``min_tissue`` tissue (never sent to the model);
    ``mpp`` is the image's µm/pixel when the file does not say.
    """
    model, card = load_checkpoint(checkpoint, task="segmentation")
    predictor = TilePredictor(model, card, device)
    slide = open_slide(path, mpp=mpp)
    channels = int(card.options.get("in_channels", 3))
    where = slide.model_level(
        card.mpp, level=level, region=region, channels=channels, tolerance=card.mpp_tolerance
    )
    resampled = where.pop("resampled")
    threshold = options.pop("threshold", None)
    min_area = options.pop("min_area", 0)
    y0, x0, y1, x1 = where["region"] or (0, 0, *where["source"].shape[:2])
    labels_out = None
    if (y1 - y0) * (x1 - x0) > LAZY_ABOVE and "out" not in options:
        # Large regions: outputs are zarr arrays whose chunks exist only once written.
        options["out"] = lazy_probability((y1 - y0, x1 - x0))
        labels_out = zarr.create_array(
            store={}, shape=(y1 - y0, x1 - x0), chunks=(1024, 1024), dtype="uint32"
        )
    run = SegmentationRun(where.pop("source"), predictor, **where, **options)
    if tissue_only:
        run.restrict_to_tissue(slide_tissue_mask(slide), min_tissue, source=slide.path)
    run.run()
    result = run.result(threshold, min_area, labels_out)
    result.resampled, result.note = resampled, resampling_note(resampled, card.mpp)
    return result


def pseudo_masks(
    image: np.ndarray,
    centroids: np.ndarray,
    predictor: TilePredictor,
    *,
    mpp: float,
    window: int = 128,
    threshold: float | None = None,
    fallback_radius_um: float = 4.0,
) -> tuple[np.ndarray, Detections, np.ndarray]:
    """Masks for centroid-only annotations (ICPR 2014): per centroid, the U-Net component
    containing it, else a disc of ``fallback_radius_um``. Returns labels (i+1 for centroid
    i), their boxes (level-0 px) and which centroids fell back to a disc."""
    card: ModelCard = predictor.card
    threshold = card.threshold if threshold is None else threshold
    height, width = image.shape[:2]
    labels = np.zeros((height, width), np.uint16)
    fell_back = np.zeros(len(centroids), bool)
    half = window // 2
    padded = np.pad(
        image, [(half, half), (half, half)] + [(0, 0)] * (image.ndim - 2), mode="reflect"
    )
    crops = (
        np.stack([padded[int(y) : int(y) + window, int(x) : int(x) + window] for y, x in centroids])
        if len(centroids)
        else None
    )
    probabilities = predictor(crops) if crops is not None else np.zeros((0, 1, window, window))
    radius_px = fallback_radius_um / mpp
    yy, xx = np.ogrid[0:window, 0:window]
    for i, ((cy, cx), prob) in enumerate(zip(centroids, probabilities, strict=True)):
        components = label(prob[0] >= threshold, connectivity=2)
        hit = components[half, half]
        local = components == hit if hit else (yy - half) ** 2 + (xx - half) ** 2 <= radius_px**2
        fell_back[i] = not hit
        top, left = int(cy) - half, int(cx) - half
        ys, xs = np.nonzero(local)
        ys, xs = ys + top, xs + left
        inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
        ys, xs = ys[inside], xs[inside]
        free = labels[ys, xs] == 0
        labels[ys[free], xs[free]] = i + 1
    return labels, boxes_from_labels(labels), fell_back


def write_segmentation(
    result: SegmentationResult, out_dir: str | Path, stem: str, *, overwrite: bool = False
) -> list[Path]:
    """Labels (pyramidal TIFF), boxes (CSV + QuPath GeoJSON) and COCO RLE (JSON) of a result."""
    import json

    from napari_mitosis.io.detections import write_detections_csv
    from napari_mitosis.io.geojson import write_geojson
    from napari_mitosis.io.output_file import atomic_output
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
    from napari_mitosis.io.rle import labels_to_coco

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        out_dir / f"{stem}.{name}"
        for name in ("labels.tif", "boxes.csv", "boxes.geojson", "rle.json")
    ]
    for path in paths:  # refuse before writing anything, so a refusal leaves no partial set
        if path.exists() and not overwrite:
            from napari_mitosis.io.errors import OutputExistsError

            raise OutputExistsError(path)
    write_pyramid_tiff(
        paths[0], result.labels, mpp=result.level_mpp, layer_type="labels", overwrite=overwrite
    )
    write_detections_csv(paths[1], result.detections, overwrite=overwrite)
    write_geojson(paths[2], result.detections.to_annotations(), overwrite=overwrite)
    record = {
        "region_yx": list(result.region),
        "level": result.level,
        "annotations": labels_to_coco(result.labels),
    }
    with atomic_output(paths[3], overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(record))
    return paths
