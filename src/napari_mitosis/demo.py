"""The main job on the embedded sample: what `make demo` runs.

Generate the synthetic slide; print its summary; export its true mitoses as QuPath
GeoJSON; train a small demo U-Net on synthetic fields (no weights ship with the package;
its model card says "demo model, trained on synthetic data"); segment the slide's tissue
with it and score the result against the truth; show it all in napari (a window, or
headless a screenshot). Later capabilities extend this to the whole pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_mitosis.geojson import Annotation, read_geojson, write_geojson
from napari_mitosis.slide import open_slide
from napari_mitosis.synthetic import SampleSlide, ensure_sample_slide

if TYPE_CHECKING:
    from napari_mitosis.segmentation import SegmentationResult


def run_demo(out: Path, *, headless: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sample = ensure_sample_slide(out)
    print(f"sample slide: {sample.path} ({time.perf_counter() - started:.1f} s)")

    with open_slide(sample.path) as slide:
        print(slide.summary())
    geojson = out / "true-mitoses.geojson"
    if not geojson.exists():
        write_geojson(geojson, [Annotation(p[None], "point", "Mitosis") for p in sample.mitoses])
    print(f"true mitoses: {len(sample.mitoses)} → {geojson} (QuPath: File ▸ Import objects)")
    result = _segment_with_demo_unet(sample, out)

    import napari  # only the viewer part of the demo needs napari and Qt
    from napari.layers import Layer

    from napari_mitosis._reader import annotation_layer_data

    sample_mpp = (sample.mpp, sample.mpp)

    viewer = napari.Viewer(show=True, title="napari-mitosis demo")
    viewer.open(sample.path, plugin="napari-mitosis")
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
        np.asarray(result.labels),
        name="U-Net mitoses (demo model)",
        scale=sample_mpp,
        units=("micrometer", "micrometer"),
        opacity=0.8,
    )
    labels.contour = 2
    viewer.layers.selection.active = labels
    viewer.scale_bar.visible = True
    viewer.window.resize(1400, 900)
    viewer.reset_view()
    if headless:
        shot = out / "screenshot.png"
        _settle(viewer)
        viewer.screenshot(str(shot), canvas_only=False, flash=False)
        print(f"screenshot: {shot}")
        # Close-up on one mitosis: the level-0 tiles load, the labels' contours show.
        y, x = sample.mitoses[0] * sample.mpp
        viewer.camera.center = (y, x)
        viewer.camera.zoom = 12.0  # screen pixels per µm: ~80 µm across the canvas
        _settle(viewer)
        close_up = out / "screenshot-mitosis.png"
        viewer.screenshot(str(close_up), canvas_only=False, flash=False)
        print(f"close-up: {close_up}")
        viewer.close()
    else:
        napari.run()


def _segment_with_demo_unet(sample: SampleSlide, out: Path) -> SegmentationResult:
    """Train (once) a small U-Net on synthetic fields, segment the sample's tissue, score it."""
    from napari_mitosis.segmentation import segment_slide, write_segmentation
    from napari_mitosis.segmentation_training import UNetTraining, train_unet
    from napari_mitosis.synthetic import synthetic_fields

    model = out / "demo-unet.safetensors"
    if not model.exists():
        started = time.perf_counter()
        fields = synthetic_fields(6, first_seed=100)
        pairs = [(rgb, truth.mitosis_mask) for rgb, truth in fields]
        config = UNetTraining.small(device="auto", notes="demo model, trained on synthetic data")
        report = train_unet(pairs[:4], pairs[4:], model, config, overwrite=True)
        print(
            f"demo U-Net: validation Dice {report.best_dice:.3f} ({time.perf_counter() - started:.0f} s) → {model}"
        )
    started = time.perf_counter()
    result = segment_slide(sample.path, model, tissue_only=True, tile=256, overlap=32, min_area=50)
    found = result.detections.centres
    distances = (
        np.hypot(*(found[:, None, :] - sample.mitoses[None, :, :]).transpose(2, 0, 1)) * sample.mpp
    )
    hits = int((distances.min(axis=0) <= 8.0).sum()) if len(found) else 0
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
