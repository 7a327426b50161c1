"""The whole pipeline on one slide: tissue → tumour heatmap and mask → mitoses inside
tumour (or tissue) → the numbers a cohort table reports, and the files behind them.

It is made of the single-slide API (`classify_slide`, `detect_slide`) with the models
loaded once (`PipelineModels`), so a cohort worker runs exactly what a script would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from napari_mitosis.classification.heatmap_files import HeatmapFormat, write_heatmap
from napari_mitosis.classification.run import ClassifierPredictor, HeatmapResult, classify_slide
from napari_mitosis.detection.run import DetectionResult, detect_slide
from napari_mitosis.engine.tissue import TissueMask, slide_tissue_mask
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.detector import DetectionPredictor

#: ``progress(stage, done, total)``: stage is "classify" or "detect".
StageProgress = Callable[[str, int, int], None]


@dataclass
class PipelineSettings:
    """Everything that decides a slide's results besides the slide and the weights."""

    classifier: str | None = None  # checkpoint path; None skips the tumour heatmap
    detector: str | None = None  # checkpoint path; None skips mitosis detection
    subtype: str | None = None  # crop classifier on each candidate (p_atypical)
    verify: str | None = None  # second-stage crop classifier (p_mitosis)
    drop_unverified: bool = False  # keep only candidates the verifier passes
    detect_in: Literal["tumour", "tissue"] = "tumour"  # "tumour" needs a classifier
    device: str = "auto"
    #: decode JPEG tiles and cut patches on the model's device (`engine.device_tiles`);
    #: "auto": on a CUDA device, where the CPU's JPEG decoding would feed it too slowly
    device_tiles: bool | Literal["auto"] = "auto"
    classify_min_tissue: float = 0.3
    classify_stride: int | None = None  # level px per heatmap cell (None: patch / 2)
    classify_threshold: float | None = None  # None: the card's
    tta: bool | None = None  # None: as the classifier was trained (its card's ``tta``)
    classify_batch_size: int = 16
    detect_min_tissue: float = 0.05  # tiles need this much of the tumour/tissue mask
    detect_tile: int | None = None  # px per detector tile (None: its training crop)
    detect_overlap: int = 64
    score_threshold: float | None = None  # None: the card's F1-optimal threshold
    detect_batch_size: int = 4
    heatmap_format: HeatmapFormat = "ome-zarr"

    def __post_init__(self) -> None:
        if self.classifier is None and self.detector is None:
            raise ValueError("the pipeline needs a classifier, a detector or both")
        if self.detect_in not in ("tumour", "tissue"):
            raise ValueError(f"detect_in must be 'tumour' or 'tissue', not {self.detect_in!r}")
        if self.detect_in == "tumour" and self.detector and not self.classifier:
            raise ValueError("detecting inside tumour needs a classifier; use detect_in='tissue'")
        if (self.subtype or self.verify) and not self.detector:
            raise ValueError("classifying candidates (subtype, verify) needs a detector")

    def on_device_tiles(self, device: Any) -> bool:
        """Whether a model on ``device`` reads device tiles (``device_tiles``)."""
        if self.device_tiles == "auto":
            return getattr(device, "type", str(device)) == "cuda"
        return bool(self.device_tiles)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PipelineSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(f"unknown pipeline settings {unknown}; known: {sorted(known)}")
        return cls(**record)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PipelineModels:
    """The loaded models of a pipeline; load once per process (or Dask worker)."""

    classifier: ClassifierPredictor | None = None
    detector: DetectionPredictor | None = None
    subtype: ClassifierPredictor | None = None
    verify: ClassifierPredictor | None = None

    @classmethod
    def load(cls, settings: PipelineSettings) -> PipelineModels:
        from napari_mitosis.models.checkpoint import load_checkpoint

        classifier = detector = None
        if settings.classifier:
            model, card = load_checkpoint(settings.classifier, task="classification")
            classifier = ClassifierPredictor(model, card, settings.device, tta=settings.tta)
        if settings.detector:
            model, card = load_checkpoint(settings.detector, task="detection")
            detector = DetectionPredictor(model, card, settings.device, tile=settings.detect_tile)
        crops = [
            None if path is None else ClassifierPredictor(
                *load_checkpoint(path, task="classification"), settings.device
            )
            for path in (settings.subtype, settings.verify)
        ]  # fmt: skip
        return cls(classifier, detector, *crops)


@dataclass
class SlideAnalysis:
    """One slide's results and the numbers of its summary line."""

    path: Path
    mpp: tuple[float, float] | None
    tissue: TissueMask
    heatmap: HeatmapResult | None
    detection: DetectionResult | None
    detect_in: str
    seconds: float = 0.0
    numbers: dict[str, Any] = field(default_factory=dict)
    #: The candidate classifiers' model and threshold per column (`CandidateScores.models`).
    candidate_models: dict[str, dict[str, Any]] = field(default_factory=dict)

    def summarise(self) -> dict[str, Any]:
        """tissue/tumour area (mm²), the detector's candidate count and per mm² of the
        analysed area, and the densest 10-HPF area's count, per mm² and per 10 HPF (None if
        unknown). Named "candidates": a machine count, not a reviewed one."""
        row: dict[str, Any] = {
            "tissue_area_mm2": None,
            "tumour_area_mm2": None,
            "candidate_count": None,
            "candidates_in": self.detect_in if self.detection else None,
            "candidates_per_mm2": None,
            "hotspot_candidates": None,
            "hotspot_candidates_per_mm2": None,
            "hotspot_candidates_per_10_hpf": None,
            "atypical_count": None,
            "atypical_per_mm2": None,
            "atypical_fraction": None,
        }
        if self.mpp is not None:
            ds = self.tissue.downsample
            row["tissue_area_mm2"] = float(self.tissue.mask.sum()) * ds[0] * ds[1]
            row["tissue_area_mm2"] *= self.mpp[0] * self.mpp[1] / 1e6
        if self.heatmap is not None:
            row["tumour_area_mm2"] = self.heatmap.tumour_area_mm2()
        if self.detection is not None:
            row["candidate_count"] = len(self.detection.detections)
            density = self.detection.density()
            if density is not None:
                row["candidates_per_mm2"] = density["per_mm2"]
            if self.detection.hotspot is not None:
                row["hotspot_candidates"] = int(self.detection.hotspot["count"])
                row["hotspot_candidates_per_mm2"] = self.detection.hotspot["per_mm2"]
                row["hotspot_candidates_per_10_hpf"] = self.detection.hotspot["per_10_hpf"]
            self._atypical(row)
        return row

    def _atypical(self, row: dict[str, Any]) -> None:
        """The subtyping classifier's atypical calls, per mm² and as a share."""
        found = self.detection.detections if self.detection else None
        record = self.candidate_models.get("p_atypical")
        if found is None or record is None or "p_atypical" not in found.measurements:
            return
        count = int((found.measurements["p_atypical"] >= record["threshold"]).sum())
        row["atypical_count"] = count
        row["atypical_fraction"] = count / len(found) if len(found) else None
        if self.detection.area_mm2:
            row["atypical_per_mm2"] = count / self.detection.area_mm2


def analyse_slide(
    path: str | Path,
    models: PipelineModels,
    settings: PipelineSettings,
    *,
    mpp: float | None = None,
    progress: StageProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SlideAnalysis:
    """Run the pipeline on one slide (nothing is written; see `write_analysis`).

    An empty tumour mask is a result (no mitoses are looked for), not an error. ``mpp``
    is the slide's µm/pixel when the file does not say.
    """
    started = time.perf_counter()
    path = Path(path)
    with open_slide(path, mpp=mpp) as slide:
        slide.check_model_input()  # before tissue detection, which has its own needs
        tissue = slide_tissue_mask(slide)
        heatmap = detection = None
        if models.classifier is not None:
            heatmap = classify_slide(
                slide,
                models.classifier,
                tissue=tissue,
                min_tissue=settings.classify_min_tissue,
                stride=settings.classify_stride,
                threshold=settings.classify_threshold,
                batch_size=settings.classify_batch_size,
                device_tiles=settings.on_device_tiles(models.classifier.device),
                progress=_stage(progress, "classify"),
                should_stop=should_stop,
            )
        if models.detector is not None:
            within = tissue
            if settings.detect_in == "tumour" and heatmap is not None:
                within = heatmap.tumour_region()
            if within.mask.any():
                detection = detect_slide(
                    slide,
                    models.detector,
                    within=within,
                    min_tissue=settings.detect_min_tissue,
                    score_threshold=settings.score_threshold,
                    overlap=settings.detect_overlap,
                    batch_size=settings.detect_batch_size,
                    device_tiles=settings.on_device_tiles(models.detector.device),
                    progress=_stage(progress, "detect"),
                    should_stop=should_stop,
                )
            else:
                detection = _nothing_found(slide)
        scored: dict[str, dict[str, Any]] = {}
        if detection is not None and (models.subtype or models.verify):
            scored = _classify_candidates(slide, detection, models, settings, progress, should_stop)
        mpp = slide.mpp
    analysis = SlideAnalysis(
        path, mpp, tissue, heatmap, detection, settings.detect_in if detection else ""
    )
    analysis.candidate_models = scored
    analysis.seconds = time.perf_counter() - started
    analysis.numbers = analysis.summarise()
    return analysis


def _classify_candidates(
    slide: Any,
    detection: DetectionResult,
    models: PipelineModels,
    settings: PipelineSettings,
    progress: StageProgress | None,
    should_stop: Callable[[], bool] | None,
) -> dict[str, dict[str, Any]]:
    """Each candidate's crop through the subtyping classifier and the verifier, in place."""
    from napari_mitosis.detection.candidates import classify_candidates, with_scores

    names = tuple(None if p is None else Path(p).stem for p in (settings.subtype, settings.verify))
    scores = classify_candidates(
        slide,
        detection.detections.centres,
        subtype=models.subtype,
        verify=models.verify,
        names=names,  # type: ignore[arg-type]
        progress=progress,
        should_stop=should_stop,
    )
    detection.detections = with_scores(
        detection.detections, scores, drop_unverified=settings.drop_unverified
    )
    return scores.models


def _stage(progress: StageProgress | None, stage: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def _nothing_found(slide: Any) -> DetectionResult:
    from napari_mitosis.io.detections import Detections

    return DetectionResult(Detections([], mpp=slide.mpp), 0, None, 0, None)


def analysis_paths(
    folder: str | Path, stem: str, settings: PipelineSettings
) -> dict[str, list[Path]]:
    """The files `write_analysis` writes, by kind."""
    from napari_mitosis.classification.heatmap_files import heatmap_paths
    from napari_mitosis.models.checkpoint import read_card

    folder = Path(folder)
    paths: dict[str, list[Path]] = {}
    if settings.classifier:
        classes = read_card(settings.classifier).classes
        paths["tumour"] = heatmap_paths(folder, stem, settings.heatmap_format, classes)
    if settings.detector:
        paths["mitoses"] = [folder / f"{stem}.mitoses{x}" for x in (".geojson", ".csv")]
    return paths


def write_analysis(
    analysis: SlideAnalysis,
    folder: str | Path,
    stem: str,
    settings: PipelineSettings,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Heatmap + mask (OME-Zarr or TIFF) + tumour GeoJSON, mitosis boxes as QuPath
    GeoJSON + CSV, all in level-0 pixels / µm; each written atomically."""
    from napari_mitosis.io.detections import write_detections_csv
    from napari_mitosis.io.geojson import CLASSIFIERS_KEY, write_geojson
    from napari_mitosis.models.registry import model_name

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    planned = analysis_paths(folder, stem, settings)
    if analysis.heatmap is not None:
        written += write_heatmap(
            analysis.heatmap, folder, stem, fmt=settings.heatmap_format, overwrite=overwrite
        )
    if analysis.detection is not None:
        geojson, table = planned["mitoses"]
        found = analysis.detection.detections
        features = found.to_annotations(model_name(settings.detector))
        for feature in features if analysis.candidate_models else ():
            feature.properties[CLASSIFIERS_KEY] = analysis.candidate_models
        written.append(write_geojson(geojson, features, overwrite=overwrite))
        written.append(write_detections_csv(table, found, overwrite=overwrite))
    return written
