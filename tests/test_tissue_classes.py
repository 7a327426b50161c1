"""A user draws regions of several tissue classes on one slide (QuPath polygons or a labels
image), trains a K-class classifier held out by region, and gets a class map of another
slide that matches its true tissue types."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from skimage.measure import find_contours
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from napari_mitosis.classification.metrics import multiclass_metrics
from napari_mitosis.classification.run import classify_slide
from napari_mitosis.classification.slide_regions import cell_classes, cell_grid, class_regions
from napari_mitosis.cli import main
from napari_mitosis.engine.region_split import region_split
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import Annotation, write_geojson
from napari_mitosis.models.checkpoint import read_card

CLASSES = ("glass", "stroma", "tumour")


def true_classes(truth) -> np.ndarray:
    """0 glass, 1 stroma, 2 tumour, per pixel of a synthetic slide."""
    return np.where(truth.tumour_mask, 2, np.where(truth.tissue_mask, 1, 0))


def region_polygons(truth, path: Path) -> Path:
    """The slide's tissue types as QuPath polygons drawn in order (glass, then tissue, then
    tumour over it), outlines traced on an 8× smaller grid."""
    height, width = truth.tissue_mask.shape
    whole = np.array([[0, 0], [0, width], [height, width], [height, 0]], float)
    features = [Annotation(whole, "polygon", "Glass")]
    for name, mask in (("Stroma", truth.tissue_mask), ("Tumour", truth.tumour_mask)):
        padded = np.pad(mask[::8, ::8], 1).astype(float)
        for contour in find_contours(padded, 0.5):
            features.append(Annotation((contour - 1) * 8, "polygon", name))
    return write_geojson(path, features)


def test_multiclass_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + 1.5 * np.eye(3)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    metrics = multiclass_metrics(labels, probabilities)
    predicted = probabilities.argmax(1)
    assert metrics.auc == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"))
    assert metrics.f1 == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics.balanced_accuracy == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert metrics.recall[1] == pytest.approx(np.mean(predicted[labels == 1] == 1))
    # F_med: the harmonic mean of mean per-class sensitivity and specificity.
    spec = np.mean([np.mean(predicted[labels != k] != k) for k in range(3)])
    sens = metrics.balanced_accuracy
    assert metrics.f_med == pytest.approx(2 * sens * spec / (sens + spec))


def test_the_held_out_band_leaves_every_class_on_both_sides() -> None:
    # Class 1 lives only on the left; a plain split by count would hold out the right third.
    rng = np.random.default_rng(1)
    left = np.c_[rng.uniform(0, 1000, 60), rng.uniform(0, 900, 60)]
    right = np.c_[rng.uniform(0, 1000, 120), rng.uniform(1100, 3000, 120)]
    centres = np.r_[left, right]
    classes = np.r_[np.ones(60, int), np.zeros(120, int)]
    split = region_split(centres, (1000, 3000), 100, 0.2, "test", classes)
    held = split.held_out(*split.cells(centres).T)
    for k in (0, 1):
        assert 0 < held[classes == k].mean() < 1
    with pytest.raises(ValueError, match="every class"):
        # every class-1 object inside one field: no band can hold some of them out
        lone = np.r_[np.full((5, 2), 450.0), right]
        region_split(lone, (1000, 3000), 100, 0.2, "x.geojson", np.r_[np.ones(5), np.zeros(120)])


def test_polygons_and_a_labels_image_give_the_same_cell_classes(
    tumour_slides, tmp_path: Path
) -> None:
    path, truth = tumour_slides[0]
    slide = open_slide(path)
    grid = cell_grid(slide, 0, 32)
    polygons = region_polygons(truth, tmp_path / "regions.geojson")
    labels_tif = tmp_path / "slide0.labels.tif"
    tifffile.imwrite(labels_tif, (true_classes(truth) + 1).astype(np.uint8))
    from_polygons = cell_classes(grid, class_regions(slide, polygons, CLASSES))
    from_labels = cell_classes(grid, class_regions(slide, labels_tif, CLASSES))
    centres = grid.origins() + 16
    expected = true_classes(truth)[centres[:, 0], centres[:, 1]]
    assert np.mean(from_labels == expected) > 0.97
    assert np.mean(from_polygons == from_labels) > 0.97
    # Names that no polygon carries, and labels past the named classes, are refused by name.
    with pytest.raises(ValueError, match=r"no polygons of class Necrosis.*Glass, Stroma, Tumour"):
        class_regions(slide, polygons, ("glass", "Necrosis"))
    with pytest.raises(ValueError, match=r"slide0\.labels\.tif: holds label 3 but only 2"):
        class_regions(slide, labels_tif, ("glass", "stroma"))


def test_cli_fine_tunes_a_three_class_model_on_one_slide_and_maps_another(
    tumour_slides, trained_classifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """From the suite's two-class tumour model (--init): its network, input size and
    µm/px, with a new three-class last layer."""
    path, truth = tumour_slides[0]
    polygons = region_polygons(truth, tmp_path / "regions.geojson")
    out = tmp_path / "tissue.safetensors"
    assert main([
        "train-classifier", str(path), "--annotations", str(polygons), "--classes", *CLASSES,
        "--init", str(trained_classifier[0]), "--window", "32", "--per-class", "80",
        "--epochs", "4", "--patience", "4", "--out", str(out), "--device", "cpu",
    ]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "split by region" in printed and "glass" in printed and "tumour" in printed
    card, base = read_card(out), read_card(trained_classifier[0])
    assert card.classes == CLASSES and card.options == {**base.options, "outputs": 3}
    assert card.input_size == 64 and card.mpp == 1.0
    assert card.training["init"] == str(trained_classifier[0])
    assert card.metrics["val_balanced_accuracy"] > 0.8
    assert min(card.metrics[f"val_recall_{k}"] for k in range(3)) > 0.7  # glass too
    assert "split by region" in card.notes and "regions.geojson (" in card.notes
    assert "annotated cells;" in card.notes

    # On a slide it never saw, the argmax map matches the true tissue types in every cell
    # of one type (cells on a border between types are either).
    other, other_truth = tumour_slides[2]
    result = classify_slide(other, out, device="cpu", stride=32, min_tissue=0.3)
    assert result.classes == CLASSES and not result.binary
    kinds = np.eye(3)[true_classes(other_truth)].reshape(32, 32, 48, 32, 3).mean(axis=(1, 3))
    pure = result.visited & (kinds.max(axis=2) > 0.9)
    called = result.mask[pure] - 1
    expected = kinds.argmax(axis=2)[pure]
    assert set(expected) == {1, 2} and balanced_accuracy_score(expected, called) > 0.9

    # evaluate-classifier scores the same map against the other slide's own regions.
    folder = tmp_path / "regions"
    folder.mkdir()
    region_polygons(other_truth, folder / f"{other.stem}.geojson")
    report = tmp_path / "evaluation"
    assert main([
        "evaluate-classifier", str(other), "--annotations", str(folder),
        "--model", str(out), "--out", str(report), "--device", "cpu", "--json",
    ]) == 0  # fmt: skip
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["recall_1"] > 0.8 and metrics["recall_2"] > 0.8 and metrics["n"] > 500
    assert (report / "confusion.png").is_file()
    # One annotation file for one slide, as the docs show it: the same numbers.
    assert main([
        "evaluate-classifier", str(other), "--annotations", str(folder / f"{other.stem}.geojson"),
        "--model", str(out), "--out", str(tmp_path / "one-file"), "--device", "cpu", "--json",
    ]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == metrics


def test_three_class_folders_train_and_evaluate(tumour_slides, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from napari_mitosis.classification.slide_regions import read_patches

    path, truth = tumour_slides[1]
    slide = open_slide(path)
    grid = cell_grid(slide, 0, 32)
    kinds = np.eye(3)[true_classes(truth)].reshape(32, 32, 48, 32, 3).mean(axis=(1, 3))
    pure = kinds.reshape(-1, 3).max(axis=1) > 0.95
    labels = kinds.reshape(-1, 3).argmax(axis=1)
    rng = np.random.default_rng(0)
    data = tmp_path / "patches"
    for k, name in enumerate(CLASSES):
        (data / name).mkdir(parents=True)
        chosen = rng.choice(np.flatnonzero(pure & (labels == k)), 40, replace=False)
        patches = read_patches(slide, grid, grid.origins()[chosen], 64, None)
        for i, patch in zip(chosen, patches, strict=True):
            Image.fromarray(patch).save(data / name / f"{i}.png")
    out = tmp_path / "folders.safetensors"
    assert main([
        "train-classifier", str(data), "--width", "8", "--epochs", "2", "--out", str(out),
        "--device", "cpu",
    ]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "macro AUC" in printed and "recall: glass" in printed
    header = out.with_suffix(".test.csv").read_text().splitlines()[0]
    assert header == "file,group,label,p_glass,p_stroma,p_tumour"
    assert out.with_suffix(".confusion.png").is_file() and read_card(out).classes == CLASSES
