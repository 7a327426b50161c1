"""The main job on the embedded samples: what `make demo` runs.

Generate three synthetic slides (one 6144 × 4096 with known mitoses, two smaller); train
small demo models on other synthetic data unless the user gives checkpoints (no weights
ship with the package; every card says "demo model, trained on synthetic data"): a
U-Net, a tumour classifier and a mitosis detector; segment the first slide with the
U-Net; run the whole pipeline (tissue → tumour heatmap → mitoses inside tumour) over all
three as a cohort on a local Dask cluster; score the first against its truth; show it
all in napari (a window, or headless a screenshot) and say how to open it in QuPath.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import Annotation, read_geojson, write_geojson
from napari_mitosis.samples.synthetic import SampleSlide, ensure_sample_slide

if TYPE_CHECKING:
    from napari_mitosis.cohort.runner import CohortReport
    from napari_mitosis.segmentation.run import SegmentationResult


def run_demo(
    out: Path, *, headless: bool, models: Sequence[Path] = (), workers: int | None = None
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sample = ensure_sample_slide(out / "slides")
    others = [
        ensure_sample_slide(out / "slides", height=2048, width=3072, seed=seed).path
        for seed in (1, 2)
    ]
    print(f"sample slides: {out / 'slides'} ({time.perf_counter() - started:.1f} s)")

    with open_slide(sample.path) as slide:
        print(slide.summary())
    geojson = out / "true-mitoses.geojson"
    if not geojson.exists():
        write_geojson(geojson, [Annotation(p[None], "point", "Mitosis") for p in sample.mitoses])
    print(f"true mitoses: {len(sample.mitoses)} → {geojson} (QuPath: File ▸ Import objects)")
    segmentation = _segment_with_demo_unet(sample, out)
    report = _cohort(sample, [sample.path, *others], out, models, workers)
    _show(sample, geojson, segmentation, report, out, headless=headless)


def _cohort(
    sample: SampleSlide,
    slides: list[Path],
    out: Path,
    models: Sequence[Path],
    workers: int | None,
) -> CohortReport:
    """Tumour heatmaps and mitoses in tumour for every slide, on a local Dask cluster."""
    from napari_mitosis.cohort.config import settings_from_checkpoints
    from napari_mitosis.cohort.progress import cohort_progress
    from napari_mitosis.cohort.runner import run_cohort
    from napari_mitosis.demo.models import demo_classifier, demo_detector

    if not models:
        models = [
            demo_classifier(out / "models" / "demo-classifier.safetensors"),
            demo_detector(out / "models" / "demo-detector.safetensors"),
        ]
    settings = settings_from_checkpoints(models, detect_tile=256)
    results = out / "results"
    print(f"cohort run: {len(slides)} slides → {results}")
    with cohort_progress() as on_event:
        report = run_cohort(slides, settings, results, workers=workers, on_event=on_event)
    print(f"{'slide':<34} {'tissue mm²':>10} {'tumour mm²':>10} {'candidates':>10} {'/10 HPF':>8}")
    for row in report.rows:
        if row.get("status") != "ok":
            print(f"{row['slide']:<34} failed: {row.get('error')}")
            continue
        print(
            f"{row['slide']:<34} {row['tissue_area_mm2']:>10.3f} {row['tumour_area_mm2']:>10.3f} "
            f"{row['candidate_count']:>10} {row['hotspot_candidates_per_10_hpf'] or 0:>8.1f}"
        )
    print(f"summary: {report.summary}")
    first = report.rows[0]
    if first.get("status") == "ok":
        from napari_mitosis.io.detections import read_detections_csv

        found = read_detections_csv(Path(first["outputs"]) / f"{first['slide']}.mitoses.csv")
        hits = _hits(found.centres, sample)
        print(
            f"{first['slide']}: {len(found)} mitoses detected in tumour, {hits} of the "
            f"{len(sample.mitoses)} true mitoses within 8 µm (demo models, trained on synthetic data)"
        )
    return report


def _hits(found: np.ndarray, sample: SampleSlide) -> int:
    if not len(found):
        return 0
    distances = np.hypot(*(found[:, None, :] - sample.mitoses[None, :, :]).transpose(2, 0, 1))
    return int((distances.min(axis=0) * sample.mpp <= 8.0).sum())


def _show(
    sample: SampleSlide,
    geojson: Path,
    segmentation: SegmentationResult,
    report: CohortReport,
    out: Path,
    *,
    headless: bool,
) -> None:
    import napari  # only the viewer part of the demo needs napari and Qt
    from napari.layers import Layer

    from napari_mitosis._napari.reader import annotation_layer_data
    from napari_mitosis._napari.viewer_parts import camera, scale_bar
    from napari_mitosis.io.ome_zarr import read_ome_zarr

    sample_mpp = (sample.mpp, sample.mpp)
    viewer = napari.Viewer(show=True, title="napari-mitosis demo")
    viewer.open(sample.path, plugin="napari-mitosis")
    first = report.rows[0]
    if first.get("status") == "ok":
        folder, stem = Path(first["outputs"]), first["slide"]
        zarr_path = folder / f"{stem}.tumour.ome.zarr"
        if zarr_path.exists():
            grid = read_ome_zarr(zarr_path)
            placement = {
                "scale": grid.scale,
                "translate": grid.translate,
                "units": ("micrometer", "micrometer"),
            }
            viewer.add_image(
                grid.levels[0],
                name="tumour probability (demo model)",
                colormap="inferno",
                opacity=0.35,
                contrast_limits=(0, 1),
                **placement,
            )
        boxes = read_geojson(folder / f"{stem}.mitoses.geojson")
        for data in annotation_layer_data(boxes, "detected mitoses (demo model)", mpp=sample_mpp):
            data[1].update(edge_color="cyan", face_color="transparent", edge_width=1.0)
            viewer.add_layer(Layer.create(*data))
    # The GeoJSON is in level-0 pixels; give its layer the slide's µm/pixel to overlay it.
    (points,) = annotation_layer_data(read_geojson(geojson), "true mitoses", mpp=sample_mpp)
    points[1].update(
        symbol="ring",
        size=2 * sample.mitosis_radius_px * 1.6,
        face_color="transparent",
        border_color="lime",
    )
    viewer.add_layer(Layer.create(*points))
    labels = viewer.add_labels(
        np.asarray(segmentation.labels),
        name="U-Net mitoses (demo model)",
        scale=sample_mpp,
        units=("micrometer", "micrometer"),
        opacity=0.8,
    )
    labels.contour = 2
    viewer.layers.selection.active = labels
    scale_bar(viewer).visible = True
    viewer.window.resize(1400, 900)
    viewer.reset_view()
    if first.get("status") == "ok":
        folder = Path(first["outputs"])
        print(
            f"open the results in napari: napari {sample.path} "
            f"{folder / (first['slide'] + '.tumour.ome.zarr')}  (heatmap and mask on the slide, in µm)\n"
            f"in QuPath: open {sample.path}, then File ▸ Import objects: "
            f"{folder}/*.geojson (tumour polygons, mitosis boxes with scores)"
        )
    if headless:
        shot = out / "screenshot.png"
        _settle(viewer)
        viewer.screenshot(str(shot), canvas_only=False, flash=False)
        print(f"screenshot: {shot}")
        # Close-up on one mitosis: the level-0 tiles load, the labels' contours show.
        y, x = sample.mitoses[0] * sample.mpp
        view = camera(viewer)
        view.center = (y, x)
        view.zoom = 12.0  # screen pixels per µm: ~80 µm across the canvas
        _settle(viewer)
        close_up = out / "screenshot-mitosis.png"
        viewer.screenshot(str(close_up), canvas_only=False, flash=False)
        print(f"close-up: {close_up}")
        viewer.close()
    else:
        napari.run()


def _segment_with_demo_unet(sample: SampleSlide, out: Path) -> SegmentationResult:
    """Train (once) a small U-Net on synthetic fields, segment the sample's tissue, score it."""
    from napari_mitosis.demo.models import DEMO_NOTES
    from napari_mitosis.samples.synthetic import synthetic_fields
    from napari_mitosis.segmentation.run import segment_slide, write_segmentation
    from napari_mitosis.segmentation.training import UNetTraining, train_unet

    model = out / "models" / "demo-unet.safetensors"
    if not model.exists():
        started = time.perf_counter()
        fields = synthetic_fields(6, first_seed=100)
        pairs = [(rgb, truth.mitosis_mask) for rgb, truth in fields]
        model.parent.mkdir(parents=True, exist_ok=True)
        config = UNetTraining.small(device="auto", notes=DEMO_NOTES)
        report = train_unet(pairs[:4], pairs[4:], model, config, overwrite=True)
        print(
            f"demo U-Net: validation Dice {report.best_dice:.3f} ({time.perf_counter() - started:.0f} s) → {model}"
        )
    started = time.perf_counter()
    result = segment_slide(sample.path, model, tissue_only=True, tile=256, overlap=32, min_area=50)
    found = result.detections.centres
    hits = _hits(found, sample)
    print(
        f"segmentation: {len(found)} figures found, {hits}/{len(sample.mitoses)} true mitoses within 8 µm "
        f"({time.perf_counter() - started:.0f} s; demo model, trained on synthetic data)"
    )
    for path in write_segmentation(result, out / "segmentation", sample.path.stem, overwrite=True):
        print(f"  {path}")
    return result


def _settle(viewer: object, seconds: float = 3.0) -> None:
    """Let napari's asynchronous slicing fetch the visible tiles before a screenshot."""
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
