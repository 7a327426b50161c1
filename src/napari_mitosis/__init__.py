"""napari-mitosis: whole-slide breast-cancer histopathology in napari and in scripts.

The names below are the public, napari-free API: scripts import them from here, so moving a
module inside the package never breaks them. Each is imported on first use, so
``import napari_mitosis`` stays cheap (no torch, no napari, no Qt).

The package is split by pipeline stage (reader → tiles → model → merger → writer): ``io``,
``models``, ``engine``, then one subpackage per task (``segmentation``, ``detection``,
``classification``), ``cohort``, ``samples``, ``demo``, ``cli`` and the napari layer
``_napari``. ``docs/architecture.md`` draws the flow.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    # reading and writing
    "open_slide": "io.formats",
    "Slide": "io.slide",
    "SlideMetadata": "io.slide",
    "SUPPORTED_SUFFIXES": "io.formats",
    "SlideError": "io.errors",
    "SlideNotFoundError": "io.errors",
    "UnsupportedFormatError": "io.errors",
    "CorruptSlideError": "io.errors",
    "OutputExistsError": "io.errors",
    "Annotation": "io.geojson",
    "read_geojson": "io.geojson",
    "write_geojson": "io.geojson",
    "write_pyramid_tiff": "io.pyramid_tiff",
    "write_ome_zarr": "io.ome_zarr",
    "read_ome_zarr": "io.ome_zarr",
    "read_asap_xml": "io.asap_xml",
    "Detections": "io.detections",
    "read_detections_csv": "io.detections",
    "write_detections_csv": "io.detections",
    "boxes_from_labels": "io.detections",
    # models
    "ModelCard": "models.card",
    "card_schema": "models.card",
    "load_checkpoint": "models.checkpoint",
    "save_checkpoint": "models.checkpoint",
    "read_card": "models.checkpoint",
    "build_model": "models.card",
    "import_model": "models.checkpoint",
    "ModelRegistry": "models.registry",
    # tiled engine
    "TileGrid": "engine.tiling",
    "TissueMask": "engine.tissue",
    "slide_tissue_mask": "engine.tissue",
    "tissue_mask": "engine.tissue",
    "Cancelled": "engine.tiled_inference",
    # segmentation
    "segment_slide": "segmentation.run",
    "segment_array": "segmentation.run",
    "pseudo_masks": "segmentation.run",
    "write_segmentation": "segmentation.run",
    "UNetTraining": "segmentation.training",
    "train_unet": "segmentation.training",
    # detection
    "detect_slide": "detection.run",
    "detect_hotspot": "detection.run",
    "detect_array": "detection.run",
    "densest_area": "detection.run",
    "mitotic_density": "detection.run",
    "match_detections": "detection.matching",
    "evaluate_detections": "detection.evaluation",
    "DetectorTraining": "detection.training",
    "train_detector": "detection.training",
    "Review": "detection.review",
    "grade": "detection.grading",
    "mitotic_score": "detection.grading",
    "write_report": "detection.report",
    # classification
    "classify_slide": "classification.run",
    "classify_images": "classification.run",
    "write_heatmap": "classification.heatmap_files",
    "class_folders": "io.class_folders",
    "ClassifierTraining": "classification.training",
    "train_classifier": "classification.training",
    "train_cross_validated": "classification.cross_validation",
    "binary_metrics": "classification.metrics",
    "multiclass_metrics": "classification.metrics",
    "class_regions": "classification.slide_regions",
    "region_examples": "classification.slide_regions",
    "froc": "classification.froc",
    # cohort
    "analyse_slide": "cohort.pipeline",
    "PipelineSettings": "cohort.pipeline",
    "run_cohort": "cohort.runner",
    "settings_from_checkpoints": "cohort.config",
    "read_run_config": "cohort.config",
    # synthetic samples
    "synthetic_slide": "samples.synthetic",
    "write_synthetic_slide": "samples.synthetic",
    "ensure_sample_slide": "samples.synthetic",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_mitosis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"napari_mitosis.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
