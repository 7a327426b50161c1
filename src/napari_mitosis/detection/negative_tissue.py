"""Real tissue without mitotic figures: what a detector learns "not a mitosis" from, and
where its false candidates are counted.

Crops centred on figures teach a detector what a figure looks like, but hold few of the
nuclei it must pass over on a whole field (lymphocytes, fibroblasts, keratinocytes,
tumour nuclei in interphase). A negative region is a slide, or a level-0 rectangle of one
(``SLIDE@y0,x0,y1,x1``), known to hold no figure. Training reads it at the model's µm/px
(resampled as inference reads it, `io.resampled`), samples crops centred on its nuclei and,
in mining rounds, on the candidates the detector still marks there; evaluation counts
those candidates per mm² of its tissue and per high-power field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from napari_mitosis.detection.run import HPF_MM2, DetectionRun
from napari_mitosis.engine.tissue import TissueMask, hsv_saturation
from napari_mitosis.io.detections import Detections
from napari_mitosis.io.formats import open_slide

Region = tuple[int, int, int, int]
#: The tissue mask's pixel, in field pixels (2 µm at 0.25 µm/px): fine enough to skip glass.
MASK_STEP = 8


@dataclass(frozen=True)
class NegativeRegion:
    """A slide (or a level-0 rectangle of it) with no mitotic figure."""

    path: Path
    region: Region | None = None

    @classmethod
    def parse(cls, text: str | Path) -> NegativeRegion:
        """``SLIDE`` or ``SLIDE@y0,x0,y1,x1`` (level-0 pixels, as ``--region`` takes)."""
        text = str(text)
        whole = Path(text).is_file()  # a file whose name holds "@" is a whole slide
        path, _, rectangle = (text, "", "") if whole or "@" not in text else text.rpartition("@")
        region = None
        if rectangle:
            try:
                values = [int(v) for v in rectangle.split(",")]
            except ValueError:
                values = []
            if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
                raise ValueError(
                    f"{text}: a negative region is SLIDE or SLIDE@y0,x0,y1,x1 in level-0 "
                    "pixels (y1 > y0, x1 > x0)"
                )
            region = (values[0], values[1], values[2], values[3])
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such slide (negative region {text!r})")
        return cls(path, region)

    def __str__(self) -> str:
        return str(self.path) + ("@" + ",".join(map(str, self.region)) if self.region else "")


@dataclass
class NegativeField:
    """A negative region's pixels at the model's µm/px, its tissue mask, its nuclei and
    mined candidates ((y, x) in those pixels)."""

    name: str
    image: np.ndarray
    mpp: float
    tissue: TissueMask
    nuclei: np.ndarray
    mined: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))

    @property
    def tissue_mm2(self) -> float:
        step_y, step_x = self.tissue.downsample
        return float(self.tissue.mask.sum()) * step_y * step_x * self.mpp**2 / 1e6

    def detect(self, predictor: Any, *, overlap: int, score_threshold: float) -> Detections:
        """The detector on this tissue's tiles only (glass is skipped), in its pixels."""
        run = DetectionRun(self.image, predictor, overlap=overlap)
        run.restrict_to_tissue(self.tissue, 0.05, source=self.name)
        run.run()
        return run.result(score_threshold)

    def split_columns(self, fraction: float) -> tuple[NegativeField, NegativeField]:
        """(left, right) parts cut at a column, the right one holding ``fraction`` of the
        nuclei: a held-out piece of the same tissue for validation that shares no pixel
        with training."""
        xs = self.nuclei[:, 1] if len(self.nuclei) else np.arange(self.image.shape[1])
        cut = int(np.quantile(xs, 1 - fraction)) // MASK_STEP * MASK_STEP
        cut = int(np.clip(cut, MASK_STEP, self.image.shape[1] - MASK_STEP))
        parts = []
        for x0, x1 in ((0, cut), (cut, self.image.shape[1])):
            keep = (self.nuclei[:, 1] >= x0) & (self.nuclei[:, 1] < x1)
            mask = self.tissue.mask[:, x0 // MASK_STEP : -(-x1 // MASK_STEP)]
            parts.append(
                NegativeField(
                    self.name,
                    np.ascontiguousarray(self.image[:, x0:x1]),
                    self.mpp,
                    TissueMask(mask, self.tissue.downsample),
                    self.nuclei[keep] - [0, x0],
                )
            )
        return parts[0], parts[1]


def nucleus_centres(image: np.ndarray, mpp: float, *, min_area_um2: float = 12.0) -> np.ndarray:
    """(y, x) centres of the haematoxylin-dark blobs of an H&E image: its nuclei, found
    by thresholding the colour-deconvolved haematoxylin channel (Otsu) after a light blur.

    A sampler centres crops on them, so negative tissue is seen nucleus by nucleus rather
    than as the stroma and glass most random crops would show."""
    if image.size == 0:
        return np.zeros((0, 2))
    haematoxylin = ndi.gaussian_filter(rgb2hed(image)[..., 0], sigma=max(1.0, 0.5 / mpp))
    if np.ptp(haematoxylin) < 1e-6:
        return np.zeros((0, 2))
    labels, count = ndi.label(haematoxylin > threshold_otsu(haematoxylin))
    if not count:
        return np.zeros((0, 2))
    index = np.arange(1, count + 1)
    areas = ndi.sum_labels(np.ones_like(labels), labels, index) * mpp**2
    centres = np.asarray(ndi.center_of_mass(labels > 0, labels, index), float).reshape(-1, 2)
    return centres[areas >= min_area_um2]


def coloured_tissue(image: np.ndarray) -> TissueMask:
    """The coloured pixels (Otsu on HSV saturation) of an RGB image, on a grid of
    `MASK_STEP` pixels: what is tissue rather than glass."""
    saturation = hsv_saturation(image[::MASK_STEP, ::MASK_STEP])
    if saturation.size == 0 or np.ptp(saturation) < 1e-3:
        return TissueMask(np.zeros(saturation.shape, bool), (MASK_STEP, MASK_STEP))
    return TissueMask(saturation > threshold_otsu(saturation), (MASK_STEP, MASK_STEP))


def read_negative_field(
    region: NegativeRegion, mpp: float, *, tolerance: float = 0.1
) -> NegativeField:
    """``region`` read at ``mpp`` µm/px (resampled when no level is within ``tolerance``)."""
    slide = open_slide(region.path)
    try:
        where = slide.model_level(mpp, region=region.region, tolerance=tolerance)
        source, box = where["source"], where["region"]
        if box is None:
            box = (0, 0, source.shape[0], source.shape[1])
        image = np.ascontiguousarray(np.asarray(source[box[0] : box[2], box[1] : box[3]])[..., :3])
    finally:
        slide.close()
    model_mpp = where["level_mpp"][1] if where["level_mpp"] else mpp
    return NegativeField(
        str(region), image, model_mpp, coloured_tissue(image), nucleus_centres(image, model_mpp)
    )


def false_candidate_rates(count: int, tissue_mm2: float) -> dict[str, float]:
    """False candidates per mm² of tissue and per high-power field (0.237 mm²)."""
    if tissue_mm2 <= 0:
        raise ValueError("no tissue in the negative region: false candidates have no rate")
    per_mm2 = count / tissue_mm2
    return {
        "false_candidates": float(count),
        "tissue_mm2": tissue_mm2,
        "per_mm2": per_mm2,
        "per_hpf": per_mm2 * HPF_MM2,
    }


def score_negative_regions(
    regions: list[NegativeRegion],
    predictor: Any,
    *,
    threshold: float | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Detect on each negative region as ``detect`` does (the model's µm/px, tissue tiles
    only): every candidate at ``threshold`` (the card's by default) is a false one.
    Per region and pooled: count, tissue mm², per mm², per HPF."""
    from napari_mitosis.detection.run import detect_slide

    rows, total, area = [], 0, 0.0
    for region in regions:
        result = detect_slide(
            region.path,
            predictor,
            region=region.region,
            tissue_only=True,
            score_threshold=threshold,
            **options,
        )
        if not result.area_mm2:
            raise ValueError(f"{region}: no tissue found (or the slide has no µm/px)")
        rows.append(
            {
                "region": str(region),
                **false_candidate_rates(len(result.detections), result.area_mm2),
            }
        )
        total, area = total + len(result.detections), area + result.area_mm2
    return {"regions": rows, **false_candidate_rates(total, area)} if rows else {"regions": []}
