"""The Train widget in a real viewer under Xvfb: from a points layer on a slide it trains
a detector in its own process with a live curve, registers it so the detection widget lists
it at once, matches the command line's result for the same data and seed, keeps only a
whole best checkpoint (or nothing) on Cancel, and ends its process when the viewer closes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_mitosis.models.checkpoint import import_model, load_checkpoint, read_card
from napari_mitosis.models.registry import ModelRegistry
from napari_mitosis.samples.synthetic import write_synthetic_slide


@pytest.fixture(scope="module")
def slide_and_truth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("train-widget") / "case.tif"
    truth = write_synthetic_slide(path, 2048, 3072, n_mitoses=40, seed=11)
    return path, truth.mitoses


def open_with_points(make_napari_viewer, slide: Path, mitoses: np.ndarray):
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(str(slide), plugin="napari-mitosis")
    points = viewer.add_points(mitoses * image.scale[-2:], name="my mitoses", units=image.units)
    return viewer, image, points


def configure(widget, image, points, *, steps: int, name: str) -> None:
    """Fine-tune the suite's detector (registered as "base"): evaluations of a model that
    already finds figures take seconds, where an untrained one's many boxes take tens."""
    widget.image.value, widget.marks.value = image, points
    widget.steps.value, widget.eval_every.value = steps, 2
    widget.crop.value, widget.device.value, widget.model_name.value = 128, "cpu", name
    widget.init.reset_choices()
    widget.init.value = "base"


@pytest.fixture
def registry(tmp_path: Path, monkeypatch, trained_detector) -> ModelRegistry:
    """A registry holding the suite's detector as "base" (training processes inherit it)."""
    monkeypatch.setenv("NAPARI_MITOSIS_MODELS", str(tmp_path / "registry"))
    import_model(trained_detector[0], name="base")
    return ModelRegistry()


def test_the_widget_trains_registers_and_matches_the_cli(
    make_napari_viewer, qtbot, slide_and_truth, tmp_path: Path, registry
) -> None:
    from napari_mitosis._napari.train_widget import TrainWidget

    slide, mitoses = slide_and_truth
    viewer, image, points = open_with_points(make_napari_viewer, slide, mitoses)
    _dock, detection = viewer.window.add_plugin_dock_widget("napari-mitosis", "Mitosis detection")
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="train")
    configure(widget, image, points, steps=4, name="from-napari")
    assert widget.found.value == "40 Mitosis (figures)"  # counted before anything starts
    widget.start()
    qtbot.waitUntil(lambda: widget.process is None, timeout=300_000)
    assert widget.registered == "from-napari", widget.status.value
    assert [step for step, _, _ in widget.history] == [2, 4]
    assert len(widget.loss_axes.lines) == 1 and len(widget.metric_axes.lines[0].get_xdata()) == 2
    assert "registered as from-napari" in widget.status.value
    assert "from-napari" in detection.registered.choices  # listed at once
    card = read_card(registry.path("from-napari"))
    assert "trained in napari from layer 'my mitoses' on case.tif, starting from base" in card.notes
    assert "40 figures" in card.notes
    # The command line (in its own process, as the widget's) on the same slide,
    # annotations and seed gives the same model.
    geojson = next(Path(widget._work).glob("*.geojson"))
    features = json.loads(geojson.read_text())["features"]
    assert len(features) == 40
    (y, x) = mitoses[0]
    assert features[0]["geometry"]["coordinates"] == pytest.approx([x, y], abs=1e-6)
    out = tmp_path / "cli.safetensors"
    command = [
        sys.executable, "-m", "napari_mitosis", "train-detector", str(slide),
        "--annotations", str(geojson), "--out", str(out), "--steps", "4",
        "--eval-every", "2", "--crop", "128", "--device", "cpu", "--init", "base",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    assert read_card(out).metrics == card.metrics
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(mitoses[0] * image.scale[-2:])
    camera.zoom = 8  # about 500 px of the slide on screen
    qtbot.wait(200)
    shown = widget.run_on_view()  # what it learnt, on the current view
    qtbot.waitUntil(lambda: "case mitoses" in viewer.layers, timeout=120_000)
    assert shown.registered.value == "from-napari" and shown.region.value == "current view"


def test_cancel_keeps_a_whole_best_model_or_nothing_and_closing_ends_training(
    make_napari_viewer, qtbot, slide_and_truth, registry
) -> None:
    import psutil

    from napari_mitosis._napari.train_widget import TrainWidget

    slide, mitoses = slide_and_truth
    viewer, image, points = open_with_points(make_napari_viewer, slide, mitoses)
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="train")
    configure(widget, image, points, steps=5000, name="cancelled")
    widget.start()
    qtbot.waitUntil(lambda: len(widget.history) >= 1, timeout=300_000)
    widget.cancel()
    qtbot.waitUntil(lambda: widget.process is None, timeout=60_000)
    left = sorted(p.name for p in Path(widget._work).iterdir() if p.suffix != ".geojson")
    if left:  # the best model so far, whole, and registered
        assert left == ["cancelled.safetensors"]
        load_checkpoint(Path(widget._work) / left[0], task="detection")
        assert widget.registered == "cancelled" and "kept the best" in widget.status.value
    else:
        assert "nothing kept" in widget.status.value
    widget.start()
    qtbot.waitUntil(lambda: widget.process is not None, timeout=10_000)
    pid = widget.process.pid
    viewer.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
