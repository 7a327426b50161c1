"""The Train widget's other tasks in a real viewer under Xvfb: a tissue classifier from a
shapes layer of classified regions (trained, registered, run on the view, and equal to the
command line's result), and the labels layers a classifier or a U-Net takes, turned into
the files the command line reads."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_mitosis.models.checkpoint import read_card
from napari_mitosis.models.registry import ModelRegistry
from test_tissue_classes import region_polygons, true_classes


@pytest.fixture
def registry(tmp_path: Path, monkeypatch) -> ModelRegistry:
    monkeypatch.setenv("NAPARI_MITOSIS_MODELS", str(tmp_path / "registry"))
    return ModelRegistry()


def open_slide_layer(make_napari_viewer, path: Path):
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(str(path), plugin="napari-mitosis")
    return viewer, image


def test_the_widget_trains_a_tissue_classifier_from_classified_regions(
    make_napari_viewer, qtbot, tumour_slides, tmp_path: Path, registry
) -> None:
    from napari_mitosis._napari.train_widget import TrainWidget
    from napari_mitosis.io.geojson import read_geojson

    path, truth = tumour_slides[0]
    viewer, image = open_slide_layer(make_napari_viewer, path)
    drawn = read_geojson(region_polygons(truth, tmp_path / "drawn.geojson"))
    shapes = viewer.add_shapes(
        [a.coords * image.scale[-2:] for a in drawn],
        shape_type="polygon",
        features={"class": [a.classification for a in drawn]},
        name="tissue types",
        units=image.units,
    )
    _dock, classification = viewer.window.add_plugin_dock_widget(
        "napari-mitosis", "Tumour classification"
    )
    widget = TrainWidget(viewer)
    viewer.window.add_dock_widget(widget, name="train")
    widget.task.value = "tissue classifier"
    assert widget.steps.label == "epochs" and widget.model_name.value == "my-classifier"
    assert shapes in widget.marks.choices and widget.marks.value is not None
    widget.image.value, widget.marks.value = image, shapes
    stroma = sum(a.classification == "Stroma" for a in drawn)
    assert widget.found.value == f"1 Glass, {stroma} Stroma, 1 Tumour (regions)"
    widget.steps.value, widget.crop.value, widget.device.value = 2, 64, "cpu"
    widget.model_name.value = "tissue"
    recipe = tmp_path / "few.yaml"  # fewer patches per class: a quicker run
    recipe.write_text("command: train-classifier\nper_class: 120\n")
    widget.recipe.value = recipe
    widget.start()
    qtbot.waitUntil(lambda: widget.process is None, timeout=300_000)
    assert widget.registered == "tissue", widget.status.value
    assert [epoch for epoch, _, _ in widget.history] == [1, 2] and widget.metric == "F1"
    assert widget.metric_axes.get_ylabel() == "F1"
    assert "tissue" in classification.registered.choices  # listed at once
    card = read_card(registry.path("tissue"))
    assert card.classes == ("Glass", "Stroma", "Tumour") and card.input_size == 64
    assert "split by region" in card.notes and "layer 'tissue types'" in card.notes
    assert card.training["data_options"]["per_class"] == 120  # the recipe, through the widget
    # The command line, in its own process as the widget's, on the same file and seed.
    geojson = next(Path(widget._work).glob("*.geojson"))
    out = tmp_path / "cli.safetensors"
    command = [
        sys.executable, "-m", "napari_mitosis", "train-classifier", str(path),
        "--annotations", str(geojson), "--classes", "Glass", "Stroma", "Tumour",
        "--input-size", "64", "--epochs", "2", "--device", "cpu", "--out", str(out),
        "--recipe", str(recipe),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    assert read_card(out).metrics == card.metrics
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    camera.center = tuple(np.asarray(truth.tumour_mask.shape) / 2 * image.scale[-2:])
    camera.zoom = 2
    qtbot.wait(200)
    shown = widget.run_on_view()
    qtbot.waitUntil(
        lambda: any("classes" in layer.name for layer in viewer.layers), timeout=120_000
    )
    assert shown.registered.value == "tissue" and shown.region.value == "current view"


def test_labels_layers_become_the_files_each_task_reads(
    make_napari_viewer, tumour_slides, tmp_path: Path, monkeypatch
) -> None:
    from napari_mitosis._napari.train_tasks import command, examples, task
    from napari_mitosis.segmentation.slide_masks import slide_pairs

    path, truth = tumour_slides[0]
    viewer, image = open_slide_layer(make_napari_viewer, path)
    kinds = true_classes(truth)  # 0 glass, 1 stroma, 2 tumour
    # A labels layer at half the slide's resolution, values 3 and 7 with class features.
    coarse = np.where(kinds[::2, ::2] == 2, 7, np.where(kinds[::2, ::2] == 1, 3, 0))
    labels = viewer.add_labels(
        coarse.astype(np.uint8),
        scale=tuple(np.asarray(image.scale[-2:]) * 2),
        translate=tuple(np.asarray(image.scale[-2:]) / 2),
        features={"index": [0, 3, 7], "class": ["none", "stroma", "tumour"]},
    )
    found = examples(task("tissue classifier"), image, labels, "")
    assert found.classes == ("stroma", "tumour") and found.unit == "px"
    assert found.counts == {"stroma": int((coarse == 3).sum()), "tumour": int((coarse == 7).sum())}
    written = tifffile.imread(found.write(tmp_path))
    np.testing.assert_array_equal(written, np.select([coarse == 3, coarse == 7], [1, 2], 0))
    line = command(task("tissue classifier"), path, tmp_path / "a.tif", tmp_path / "m.st",
                   classes=found.classes, length=3, eval_every=1, size=64, device="cpu",
                   notes="", recipe=None, init=None)  # fmt: skip
    assert (
        line[3] == "train-classifier"
        and line[line.index("--classes") + 1 :][:2] == ["stroma", "tumour"]
        and "--epochs" in line
        and "--eval-every" not in line
    )
    # A U-Net takes figures at the slide's own pixels: a labels layer at level 0 is written
    # as it is, one of another resolution is resampled onto the slide.
    figures = np.zeros(kinds.shape, np.uint16)
    for number, (y, x) in enumerate(truth.mitoses.astype(int), start=1):
        figures[y - 6 : y + 6, x - 6 : x + 6] = number
    full = viewer.add_labels(figures, scale=image.scale[-2:], name="figures")
    unet = examples(task("mitosis segmentation (U-Net)"), image, full, "")
    assert unet.counts == {"Mitosis": len(truth.mitoses)}
    (tmp_path / "unet").mkdir()
    tiff = unet.write(tmp_path / "unet")
    np.testing.assert_array_equal(tifffile.imread(tiff) > 0, figures > 0)
    pairs = slide_pairs(path, tiff, field=256)
    assert sum(int(m.any()) for _, m in pairs.train + pairs.validation) > 0
    resampled = examples(task("mitosis segmentation (U-Net)"), image, labels, "")
    (tmp_path / "resampled").mkdir()
    assert tifffile.imread(resampled.write(tmp_path / "resampled")).shape == kinds.shape
    # Labels that do not cover the slide are refused by name.
    two = np.zeros((100, 100), np.uint8)
    two[10:20, 10:20], two[50:60, 50:60] = 1, 2  # two figures, in one corner only
    corner = viewer.add_labels(two, scale=image.scale[-2:], name="corner")
    with pytest.raises(ValueError, match="corner: does not cover"):
        examples(task("mitosis segmentation (U-Net)"), image, corner, "").write(tmp_path)
    # The widget says so and starts nothing, leaving no working folder behind.
    from napari_mitosis._napari.train_widget import TrainWidget

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()
    widget = TrainWidget(viewer)
    widget.task.value = "mitosis segmentation (U-Net)"
    widget.image.value, widget.marks.value = image, corner
    widget.start()
    assert "corner: does not cover" in widget.status.value
    assert widget.process is None and not list((tmp_path / "temp").iterdir())
