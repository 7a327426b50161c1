"""Tumour patch classification over slides (Camelyon16-style heatmaps) and whole images.

The slide is cut into *cells* of ``stride`` level pixels on a uniform grid; the model sees
a ``patch`` (its card's input size) centred on each cell — plus, for two-tower models, a
same-size patch covering ``context`` × the area at a lower magnification — and its
tumour probability becomes that cell's heatmap value. Cells with too little tissue are
never sent to the model. The heatmap goes to a lazily allocated zarr array for large
regions, so memory does not grow with the slide.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from skimage.measure import find_contours

from napari_mitosis.classification.patches import PatchReader, context_level
from napari_mitosis.engine.mergers import ScoreGridMerger, lazy_probability
from napari_mitosis.engine.tiled_inference import Progress, TiledRun
from napari_mitosis.engine.tiling import Region, TileGrid, strip_order
from napari_mitosis.engine.tissue import TissueMask, slide_tissue_mask
from napari_mitosis.io.class_folders import centre_crop_of, resize_rgb
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import Annotation
from napari_mitosis.io.slide import Slide
from napari_mitosis.models.checkpoint import ModelCard, load_checkpoint
from napari_mitosis.models.inference_model import (
    channels_last,
    for_inference,
    forward_amp,
    pick_device,
)
from napari_mitosis.models.stain import card_normaliser

HeatmapFormat = Literal["tiff", "ome-zarr"]

#: Heatmaps with more cells than this go to a lazily allocated zarr array.
LAZY_CELLS = 4096 * 4096
#: ITU-R BT.601 luma, for greyscale models fed RGB.
LUMA = (0.299, 0.587, 0.114)


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of a (N, C, H, W) batch (test-time augmentation)."""
    views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return views + [torch.flip(v, dims=(3,)) for v in views]


class ClassifierPredictor:
    """uint8 (N, H, W, C) patches → (N,) probability of the positive class (``classes[1]``),
    or (N, K) class probabilities for K > 2 classes.

    Greyscale models get BT.601 luma of RGB input; input of another size is resized to
    the card's; ``tta`` averages the 8 dihedral views. On CUDA ``amp`` runs the model
    under float16 autocast; ``amp=False`` gives the CPU's float32 answers (within 1e-4).
    ``optimise`` predicts with a `for_inference` copy (batch norm folded, channels-last);
    training passes False so that scores follow the model being trained.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        device: str | torch.device = "auto",
        *,
        tta: bool = False,
        optimise: bool = True,
        amp: bool = True,
    ) -> None:
        self.device = pick_device(device)
        self.model = (for_inference(model) if optimise else model).to(self.device).eval()
        self.card = card
        self.tta = tta
        self.amp = amp and self.device.type == "cuda"  # float16 autocast (`forward_amp`)
        self.in_channels = int(card.options.get("in_channels", 3))
        towers = 2 if card.architecture == "two_tower" else 1
        mean = torch.tensor(card.mean * towers, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(card.std * towers, device=self.device).view(1, -1, 1, 1)
        self.mean, self.std = mean, std
        self.luma = torch.tensor(LUMA, device=self.device).view(1, 3, 1, 1)
        self.normalise = card_normaliser(card)

    def prepare(self, tiles: np.ndarray) -> torch.Tensor:
        if self.normalise is not None:
            tiles = self.normalise(np.asarray(tiles))
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        if x.ndim == 3:
            x = x[..., None]
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.in_channels == 1 and x.shape[1] % 3 == 0:
            x = torch.cat([(g * self.luma).sum(1, keepdim=True) for g in x.split(3, dim=1)], 1)
        elif self.in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.card.input_size
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        x = channels_last(self.prepare(tiles))
        views = dihedral_views(x) if self.tta else [x]
        total = None
        for view in views:
            logits = forward_amp(self.model, view, self.amp)
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(1)
            total = probs if total is None else total + probs
        return (total / len(views)).cpu().numpy()


@dataclass
class HeatmapResult:
    """Per-cell tumour probability over ``region`` of pyramid ``level``.

    Cell (i, j) covers level-0 pixels ``origin + (i, j) × cell_level0`` onward, one cell each
    way; ``mpp`` is the heatmap's µm per cell.
    """

    heatmap: Any  # (rows, cols) float32, NumPy or lazily allocated zarr
    mask: np.ndarray  # (rows, cols) uint8: 1 tumour, 0 not (or not analysed)
    visited: np.ndarray  # (rows, cols) bool: cells sent to the model
    region: Region  # in level pixels
    level: int
    downsample: float
    level_mpp: tuple[float, float] | None
    cell: int  # level pixels per cell
    patch: int
    threshold: float

    @property
    def cell_level0(self) -> float:
        return self.cell * self.downsample

    @property
    def origin_level0(self) -> tuple[float, float]:
        return self.region[0] * self.downsample, self.region[1] * self.downsample

    @property
    def end_level0(self) -> tuple[float, float]:
        """Where the analysed region ends (level-0 px): the last cells may reach past it."""
        return self.region[2] * self.downsample, self.region[3] * self.downsample

    @property
    def mpp(self) -> tuple[float, float] | None:
        if self.level_mpp is None:
            return None
        return self.level_mpp[0] * self.cell, self.level_mpp[1] * self.cell

    def tumour_area_mm2(self) -> float | None:
        if self.mpp is None:
            return None
        return float(self.mask.sum()) * self.mpp[0] * self.mpp[1] / 1e6

    def tumour_region(self) -> TissueMask:
        """The tumour mask in level-0 terms, for running detectors "inside tumour" (cells
        before the region's origin count as not tumour)."""
        cell = self.cell_level0
        pad = [(round(o / cell), 0) for o in self.origin_level0]
        return TissueMask(np.pad(self.mask > 0, pad), (cell, cell))

    def to_annotations(self, name: str = "Tumor") -> list[Annotation]:
        """Tumour regions as polygons in level-0 pixels (contours between cell centres)."""
        padded = np.pad(self.mask > 0, 1)
        oy, ox = self.origin_level0
        out = []
        for contour in find_contours(padded.astype(float), 0.5):
            if len(contour) < 4:
                continue
            cells = contour - 1  # undo the padding
            yx = np.stack(
                [
                    oy + (cells[:, 0] + 0.5) * self.cell_level0,
                    ox + (cells[:, 1] + 0.5) * self.cell_level0,
                ],
                axis=1,
            )
            out.append(Annotation(yx[:-1], "polygon", name))
        return out


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
    ) -> None:
        card = predictor.card
        if len(card.classes) != 2:
            raise ValueError(
                f"a tumour heatmap needs a two-class model; this one has {len(card.classes)} "
                f"classes {list(card.classes)}"
            )
        patch = card.input_size
        if stride is None:  # the widgets' "overlap" is patch − stride
            stride = patch - overlap if overlap is not None else max(patch // 2, 1)
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
        if out is None:
            out = (
                lazy_probability(shape)
                if shape[0] * shape[1] > LAZY_CELLS
                else np.zeros(shape, np.float32)
            )
        self.heatmap = out
        self.merger = ScoreGridMerger(self.grid, out)
        self.origins = self.grid.origins()
        self.level_mpp = level_mpp
        self.read = PatchReader(
            source,
            patch=patch,
            cell=stride,
            context=card.context,
            context_source=context_source,
            context_scale=context_scale,
        )

    @property
    def read_px(self) -> int:
        return self.predictor.card.input_size

    def visit_order(self) -> np.ndarray:
        """Cells in reading strips (`strip_order`): each cell's score lands in its own place,
        so order is free, and strips decode each slide tile about once."""
        return strip_order(self.origins, self.grid.stride)

    def result(self, threshold: float | None = None) -> HeatmapResult:
        threshold = self.predictor.card.threshold if threshold is None else threshold
        heatmap = np.asarray(self.heatmap)
        mask = ((heatmap >= threshold) & self.merger.visited).astype(np.uint8)
        grid = self.grid
        return HeatmapResult(
            self.heatmap,
            mask,
            self.merger.visited,
            grid.region,
            grid.level,
            grid.downsample,
            self.level_mpp,
            grid.stride,
            self.predictor.card.input_size,
            threshold,
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
    tta: bool = False,
    amp: bool = True,
    batch_size: int = 16,
    out: Any = None,
    tissue: TissueMask | None = None,
    mpp: float | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> HeatmapResult:
    """Tumour heatmap and mask of a slide at the level matching the model's µm/pixel.

    ``region`` is (y0, x0, y1, x1) in level-0 pixels. Only cells holding ``min_tissue``
    tissue reach the model when ``tissue_only`` (``tissue``: a mask already computed).
    A loaded `ClassifierPredictor` may stand for the checkpoint (cohort workers load
    each model once); ``progress(done, total)`` counts patches. ``amp=False``: float32
    on CUDA too (slower; the CPU's heatmap within 1e-4). ``mpp`` is the image's µm/pixel
    when the file does not say.
    """
    if isinstance(checkpoint, ClassifierPredictor):
        predictor = checkpoint
    else:
        model, card = load_checkpoint(checkpoint, task="classification")
        predictor = ClassifierPredictor(model, card, device, tta=tta, amp=amp)
    card = predictor.card
    slide = path if isinstance(path, Slide) else open_slide(path, mpp=mpp)
    channels = int(card.options.get("in_channels", 3))
    where = slide.model_level(card.mpp, level=level, region=region, channels=channels)
    context_source, context_scale = context_level(slide, where["level"], card.context)
    try:
        run = ClassificationRun(
            where.pop("source"),
            predictor,
            stride=stride,
            batch_size=batch_size,
            context_source=context_source,
            context_scale=context_scale,
            out=out,
            **where,
        )
    except ValueError as err:  # the run knows the arrays; the file is known here
        raise ValueError(f"{slide.path}: {err}") from None
    if tissue_only:
        run.restrict_to_tissue(tissue or slide_tissue_mask(slide), min_tissue, source=slide.path)
    run.run(progress, should_stop)
    return run.result(threshold)


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


def heatmap_paths(out_dir: str | Path, stem: str, fmt: HeatmapFormat = "tiff") -> list[Path]:
    """Where `write_heatmap` puts a heatmap: the grids, then the tumour polygons."""
    names = {
        "tiff": ("tumour_probability.tif", "tumour_mask.tif"),
        "ome-zarr": ("tumour.ome.zarr",),
    }
    if fmt not in names:
        raise ValueError(f"unknown heatmap format {fmt!r}; choose one of {sorted(names)}")
    return [Path(out_dir) / f"{stem}.{name}" for name in (*names[fmt], "tumour.geojson")]


def write_heatmap(
    result: HeatmapResult,
    out_dir: str | Path,
    stem: str,
    *,
    fmt: HeatmapFormat = "tiff",
    overwrite: bool = False,
) -> list[Path]:
    """Probability (float32) and mask (labels) in µm — two pyramidal TIFFs, or one
    OME-Zarr with the mask under ``labels/`` — and tumour polygons as QuPath GeoJSON.
    Both grid formats record the cell grid's level-0 origin and size.

    Every output is written to a temporary name first and renamed only when all
    succeeded, so a failure leaves none of them."""
    from contextlib import ExitStack

    from napari_mitosis.io.geojson import write_geojson
    from napari_mitosis.io.ome_zarr import write_ome_zarr
    from napari_mitosis.io.output_file import atomic_output, refuse_existing
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff

    out_dir = Path(out_dir)
    paths = heatmap_paths(out_dir, stem, fmt)
    refuse_existing(paths, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "origin_level0_yx": list(result.origin_level0),
        "end_level0_yx": list(result.end_level0),
        "cell_level0_px": result.cell_level0,
        "patch_px": result.patch,
        "level": result.level,
        "threshold": result.threshold,
    }
    probability = np.asarray(result.heatmap, np.float32)
    with ExitStack() as stack:
        # The GeoJSON is entered first, so it is renamed into place last.
        geojson = stack.enter_context(atomic_output(paths[-1], overwrite=overwrite))
        write_geojson(geojson, result.to_annotations(), overwrite=True)
        if fmt == "tiff":
            tmp = [stack.enter_context(atomic_output(p, overwrite=overwrite)) for p in paths[:2]]
            write_pyramid_tiff(tmp[0], probability, mpp=result.mpp, extra=extra, overwrite=True)
            write_pyramid_tiff(
                tmp[1],
                result.mask,
                mpp=result.mpp,
                layer_type="labels",
                extra=extra,
                overwrite=True,
            )
        else:
            mpp0 = None
            if result.level_mpp is not None:
                mpp0 = (
                    result.level_mpp[0] / result.downsample,
                    result.level_mpp[1] / result.downsample,
                )
            write_ome_zarr(
                paths[0],
                probability,
                name="tumour probability",
                mpp0=mpp0,
                origin_level0=result.origin_level0,
                cell_level0=result.cell_level0,
                labels={"tumour_mask": result.mask},
                colours={1: (255, 40, 40, 255)},
                extra=extra,
                overwrite=overwrite,
            )
    return paths
