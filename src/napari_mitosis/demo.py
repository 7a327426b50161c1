"""The main job on the embedded sample: what `make demo` runs.

At this stage: generate the synthetic slide, open it through the plugin in napari (a
window, or headless a screenshot), print its summary and export its true mitoses as
QuPath GeoJSON. Later capabilities extend this to the whole pipeline.
"""

from __future__ import annotations

import time
from pathlib import Path

from napari_mitosis.geojson import Annotation, read_geojson, write_geojson
from napari_mitosis.slide import open_slide
from napari_mitosis.synthetic import ensure_sample_slide


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
    viewer.scale_bar.visible = True
    viewer.window.resize(1400, 900)
    viewer.reset_view()
    if headless:
        shot = out / "screenshot.png"
        _settle(viewer)
        viewer.screenshot(str(shot), canvas_only=False, flash=False)
        print(f"screenshot: {shot}")
        viewer.close()
    else:
        napari.run()


def _settle(viewer: object, seconds: float = 3.0) -> None:
    """Let napari's asynchronous slicing fetch the visible tiles before a screenshot."""
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)
