"""Training from annotations on a whole slide: QuPath points on a synthetic slide become
detector fields held out by region (no training field overlaps a validation one, every box
sits on its figure), and `train-detector SLIDE --annotations` fine-tunes a detector
(`--init`, as a lab adapting a model would) that finds the held-out region's mitoses, where
an untrained one does not. Training from scratch on a slide is measured in
docs/benchmarks.md; the Train widget's test trains from scratch for a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_mitosis.cli import main
from napari_mitosis.detection.matching import match_detections
from napari_mitosis.detection.run import detect_array
from napari_mitosis.detection.slide_fields import slide_fields
from napari_mitosis.io.geojson import Annotation, write_geojson
from napari_mitosis.models.checkpoint import load_checkpoint
from napari_mitosis.models.detector import DetectionPredictor
from napari_mitosis.samples.synthetic import write_synthetic_slide


@pytest.fixture(scope="module")
def annotated_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    folder = tmp_path_factory.mktemp("annotated")
    slide = folder / "case.tif"
    truth = write_synthetic_slide(slide, 2048, 3072, n_mitoses=40, seed=11)
    points = folder / "case.mitoses.geojson"
    write_geojson(points, [Annotation(c[None], "point", "Mitosis") for c in truth.mitoses])
    return slide, points, truth.mitoses


def test_fields_are_split_by_region_and_keep_every_figure(annotated_slide) -> None:
    slide, points, mitoses = annotated_slide
    fields = slide_fields(slide, points, field=512, val_fraction=0.25)
    assert fields.positives == len(mitoses)
    in_train = sum(len(boxes) for _, boxes, _ in fields.train)
    in_validation = sum(len(centres) for _, centres in fields.validation)
    assert in_train + in_validation == len(mitoses)  # every figure on exactly one side
    assert in_validation == fields.held_out_positives and 0 < in_validation < len(mitoses)
    assert any(len(b) == 0 for _, b, _ in fields.train)  # tissue fields as negatives
    for image, boxes, _ in fields.train:
        assert image.shape == (512, 512, 3)
        assert ((boxes[:, [0, 2]].mean(1) >= 0) & (boxes[:, [0, 2]].mean(1) < 512)).all()
        grey = image.mean(axis=-1)
        for x0, y0, x1, y1 in boxes:  # each box is centred on its figure's dark chromatin
            y, x = int((y0 + y1) / 2), int((x0 + x1) / 2)
            if 2 <= y < 510 and 2 <= x < 510:
                assert grey[y - 2 : y + 3, x - 2 : x + 3].mean() < 90
    for image, centres in fields.validation:
        grey = image.mean(axis=-1)
        for y, x in centres.astype(int):
            if 2 <= y < 510 and 2 <= x < 510:
                assert grey[y - 2 : y + 3, x - 2 : x + 3].mean() < 90
    with pytest.raises(ValueError, match="need at least 2 mitoses"):
        one = points.with_name("one.geojson")
        write_geojson(one, [Annotation(mitoses[:1], "point", "Mitosis")])
        slide_fields(slide, one)


def held_out_f1(model_path: Path | None, slide: Path, points: Path, fields: int = 99) -> float:
    from napari_mitosis.models.card import ModelCard, build_model

    if model_path is None:
        card = ModelCard("faster_rcnn", {"backbone": "mobilenet_v3", "tile": 128},
                         task="detection", input_size=128, mpp=0.25,
                         classes=("background", "mitosis"), threshold=0.5)  # fmt: skip
        model = build_model(card)
    else:
        model, card = load_checkpoint(model_path, task="detection")
    predictor = DetectionPredictor(model, card, "cpu")
    validation = slide_fields(slide, points, field=512, val_fraction=0.25).validation
    tp = fp = fn = 0
    for image, centres in validation[:fields]:
        found = detect_array(image, predictor, mpp=(0.25, 0.25))
        match = match_detections(found.centres, centres, max_distance=8.0 / 0.25)
        tp, fp, fn = tp + match.tp, fp + match.fp, fn + match.fn
    return 2 * tp / max(2 * tp + fp + fn, 1)


def test_train_detector_on_a_slide_finds_the_held_out_region(
    annotated_slide, trained_detector, tmp_path: Path, capsys
) -> None:
    slide, points, _ = annotated_slide
    out = tmp_path / "from-slide.safetensors"
    code = main(
        [
            "train-detector", str(slide), "--annotations", str(points), "--out", str(out),
            "--crop", "128", "--steps", "20", "--eval-every", "10", "--val-fraction", "0.25",
            "--init", str(trained_detector[0]), "--lr", "1e-4", "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "split by region" in printed
    _, card = load_checkpoint(out, task="detection")
    assert "slide case.tif, annotations case.mitoses.geojson (40 figures" in card.notes
    trained = held_out_f1(out, slide, points)
    assert trained >= 0.6, trained
    # the bar an untrained detector fails (on two fields: its many boxes are slow to score)
    assert held_out_f1(None, slide, points, fields=2) < 0.3


@pytest.fixture(scope="module")
def outlined_slide(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic slide with its figures as GeoJSON outlines and as a labels TIFF."""
    from skimage.measure import find_contours, label

    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff

    folder = tmp_path_factory.mktemp("outlined")
    slide = folder / "case.tif"
    truth = write_synthetic_slide(slide, 2048, 3072, n_mitoses=30, seed=12)
    figures = label(truth.mitosis_mask)
    outlines = []
    for index in range(1, figures.max() + 1):
        (contour,) = find_contours(np.pad(figures == index, 1).astype(float), 0.5)[:1]
        outlines.append(Annotation(contour - 1, "polygon", "Mitosis"))
    geojson = write_geojson(folder / "case.outlines.geojson", outlines)
    labels = write_pyramid_tiff(
        folder / "case.labels.tif", truth.mitosis_mask.astype(np.uint8), layer_type="labels"
    )
    return slide, geojson, labels, truth


def test_unet_pairs_from_outlines_or_labels_are_the_figures_split_by_region(
    outlined_slide, tmp_path: Path, capsys
) -> None:
    from napari_mitosis.segmentation.slide_masks import slide_pairs
    from napari_mitosis.segmentation.training import dice_score

    slide, geojson, labels, truth = outlined_slide
    from_labels = slide_pairs(slide, labels)
    from_outlines = slide_pairs(slide, geojson)
    assert from_outlines.description == from_labels.description
    assert "split by region" in from_labels.description and from_labels.validation
    for a, b in zip(from_labels.train, from_outlines.train, strict=True):
        np.testing.assert_array_equal(a[0], b[0])  # the same fields
        assert a[1].any() == b[1].any()
        if a[1].any():
            assert dice_score(a[1], b[1]) > 0.8  # outlines drawn back ≈ the painted figures
    painted = sum(int(m.sum()) for _, m in from_labels.train + from_labels.validation)
    assert painted <= int(truth.mitosis_mask.sum()) and painted > 0.8 * truth.mitosis_mask.sum()
    points = tmp_path / "points.geojson"
    write_geojson(points, [Annotation(truth.mitoses[:1], "point", "Mitosis")] * 2)
    with pytest.raises(ValueError, match="is a point; the U-Net trains on outlines"):
        slide_pairs(slide, points)
    out = tmp_path / "unet.safetensors"
    code = main(
        [
            "train-unet", str(slide), "--annotations", str(labels), "--out", str(out),
            "--crop", "64", "--steps", "4", "--eval-every", "2", "--base-width", "8",
            "--depth", "3", "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0 and "split by region" in capsys.readouterr().out
    _, card = load_checkpoint(out, task="segmentation")
    assert card.notes.startswith("slide case.tif, annotations case.labels.tif (")
    # It fine-tunes (--init): the same network, the run's own record.
    tuned = tmp_path / "tuned.safetensors"
    code = main(
        [
            "train-unet", str(slide), "--annotations", str(labels), "--out", str(tuned),
            "--crop", "64", "--steps", "2", "--eval-every", "2", "--init", str(out),
            "--device", "cpu",
        ]
    )  # fmt: skip
    assert code == 0 and "validation Dice" in capsys.readouterr().out
    _, again = load_checkpoint(tuned, task="segmentation")
    assert again.options == card.options and again.training["init"] == str(out)
