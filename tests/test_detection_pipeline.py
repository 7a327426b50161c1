"""Given boxes on high-power fields, a user trains a detector, finds mitoses with it in
napari or a terminal, and scores it the way the mitosis challenges do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mitosis.cli import main
from napari_mitosis.detection.evaluation import evaluate_detections
from napari_mitosis.detection.matching import match_detections, max_distance_px
from napari_mitosis.detection.run import detect_array
from napari_mitosis.io.detections import Detections, mask_to_boxes, write_detections_csv
from napari_mitosis.io.geojson import Annotation, read_geojson, write_geojson
from napari_mitosis.models.checkpoint import load_checkpoint, read_card
from napari_mitosis.models.detector import DetectionPredictor
from napari_mitosis.samples.synthetic import synthetic_fields


@pytest.fixture(scope="module")
def test_fields():
    """Fields the detector never saw (neither in training nor in validation)."""
    return synthetic_fields(4, first_seed=50)


def test_mobilenet_detector_trained_a_few_hundred_steps_scores_f1_above_0_7(
    trained_detector, test_fields
) -> None:
    path, report = trained_detector
    model, card = load_checkpoint(path, task="detection")
    assert card.notes == "test model, synthetic data" and 0 < card.threshold < 1
    assert card.metrics["val_f1"] == report.best_f1 and report.best_step <= 300
    assert path.with_suffix(".csv").read_text().startswith("step,")  # the metrics log
    predictor = DetectionPredictor(model, card, "cpu")
    fields = [
        (str(i), detect_array(rgb, predictor, overlap=32, score_threshold=0.0), t.mitoses, 0.25)
        for i, (rgb, t) in enumerate(test_fields)
    ]
    evaluation = evaluate_detections(fields, threshold=card.threshold)
    # 12 mitoses and 12 dark look-alikes on fields it never saw, at the card's threshold.
    assert evaluation.result.f1 > 0.7, evaluation.summary()
    # Pooled counts are the sum of the per-field counts (no cross-field matches).
    assert evaluation.result.tp == sum(f.tp for f in evaluation.fields)
    assert evaluation.result.fn == sum(f.fn for f in evaluation.fields)
    assert evaluation.best.f1 >= evaluation.result.f1


def test_evaluation_pools_fields_with_their_own_resolution() -> None:
    # Field a at 0.25 µm/px (8 µm = 32 px), field b at 0.5 µm/px (8 µm = 16 px).
    a = Detections(np.array([[0, 0, 10, 10], [100, 100, 110, 110]]), np.array([0.9, 0.4]))
    b = Detections(np.array([[0, 0, 10, 10]]), np.array([0.8]))
    truth_a = np.array([[5 + 30, 5], [400, 400]])  # 30 px from a's first box: a hit at 0.25
    truth_b = np.array([[5 + 30, 5]])  # 30 px = 15 µm at 0.5 µm/px: a miss
    evaluation = evaluate_detections(
        [("a", a, truth_a, 0.25), ("b", b, truth_b, 0.5)], threshold=0.5
    )
    assert [(f.tp, f.fp, f.fn) for f in evaluation.fields] == [(1, 0, 1), (0, 1, 1)]
    r = evaluation.result
    assert (r.tp, r.fp, r.fn) == (1, 1, 2)  # a's 0.4 box is below the threshold
    assert evaluation.best_threshold == pytest.approx(0.9)  # F1 2/4 beats 2/5 and 2/6


def test_detection_boxes_round_trip_through_geojson_and_csv(tmp_path: Path) -> None:
    found = Detections(
        np.array([[10.5, 20, 40, 52.25], [1000, 2000, 1032, 2030]]),
        np.array([0.91, 0.55]),
        ["Mitosis", "Mitosis"],
        mpp=(0.25, 0.25),
    )
    write_geojson(tmp_path / "m.geojson", found.to_annotations())
    back = read_geojson(tmp_path / "m.geojson")
    assert [a.classification for a in back] == ["Mitosis", "Mitosis"]
    assert [a.measurements["score"] for a in back] == pytest.approx([0.91, 0.55])
    boxes = [(*a.coords.min(0)[::-1], *a.coords.max(0)[::-1]) for a in back]
    np.testing.assert_allclose(boxes, found.boxes)
    from napari_mitosis.io.detections import read_detections_csv

    write_detections_csv(tmp_path / "m.csv", found)
    again = read_detections_csv(tmp_path / "m.csv")
    np.testing.assert_allclose(again.boxes, found.boxes)
    np.testing.assert_allclose(again.scores, found.scores)


def write_fields(folder: Path, fields, kind: str) -> None:
    """Fields as PNGs with their truth beside them, as a user's data set would be."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (rgb, truth) in enumerate(fields):
        Image.fromarray(rgb).save(folder / f"f{i}.png")
        boxes = mask_to_boxes(truth.mitosis_mask)
        if kind == "boxes":
            write_detections_csv(folder / f"f{i}.boxes.csv", boxes)
        elif kind == "points":
            points = [Annotation(c[None], "point", "Mitosis") for c in truth.mitoses]
            write_geojson(folder / f"f{i}.geojson", points)


def test_cli_trains_a_detector_from_boxes_csv_and_from_coco(
    tmp_path: Path, field_pairs, capsys
) -> None:
    data = tmp_path / "fields"
    write_fields(data, field_pairs[:3], "boxes")
    fast = ["--steps", "2", "--eval-every", "1", "--crop", "96", "--batch-size", "2"]
    out = tmp_path / "det.safetensors"
    args = ["train-detector", str(data), "--out", str(out), *fast, "--device", "cpu"]
    assert main([*args, "--notes", "from the CLI test"]) == 0
    printed = capsys.readouterr().out
    assert "2 training and 1 validation images at 0.25 µm/px; mobilenet_v3 backbone" in printed
    card = read_card(out)
    assert card.notes == "from the CLI test" and card.input_size == 96 and card.mpp == 0.25
    assert main(args) == 2  # the checkpoint exists: refused, not replaced
    assert "already exists" in capsys.readouterr().err

    # MIDOG's layout: corner boxes, imposters, a tumour type per image; split by image,
    # a share of each tumour type held out for validation.
    from test_midog_coco import _midog_style

    coco = _midog_style(tmp_path / "midog", field_pairs[:3], tumour_types=["a", "a", "b"])
    out2 = tmp_path / "coco.safetensors"
    coco_args = ["--coco", str(coco), "--out", str(out2)]
    assert main(["train-detector", str(coco.parent), *coco_args, *fast, "--device", "cpu"]) == 0
    assert "2 training and 1 validation images at 0.25 µm/px (split by image; validation " \
        "holds a)" in capsys.readouterr().out  # fmt: skip
    assert out2.exists()


def test_cli_detects_on_a_slide_and_writes_boxes_that_read_back(
    tmp_path: Path, trained_detector, sample, capsys
) -> None:
    path, _ = trained_detector
    args = ["detect", str(sample.path), "--model", str(path), "--out", str(tmp_path / "out")]
    assert main([*args, "--tissue-only", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "per 10 HPF" in printed and "mm²" in printed
    stem = sample.path.stem
    shapes = read_geojson(tmp_path / "out" / f"{stem}.mitoses.geojson")
    from napari_mitosis.io.detections import read_detections_csv

    table = read_detections_csv(tmp_path / "out" / f"{stem}.mitoses.csv")
    assert len(shapes) == len(table) == int(printed.split(": ")[1].split()[0])
    # Machine calls are candidates until a reviewer accepts them ("Mitosis").
    assert all(
        s.classification == "Mitosis candidate" and "score" in s.measurements for s in shapes
    )
    # Most true mitoses of the slide are found, in level-0 pixels.
    result = match_detections(table.centres, sample.mitoses, max_distance=max_distance_px(0.25))
    assert result.recall >= 0.7, (result.tp, result.fn, result.fp)
    before = (tmp_path / "out" / f"{stem}.mitoses.csv").stat().st_mtime_ns
    assert main([*args, "--device", "cpu"]) == 2  # outputs exist: refused up front
    assert (tmp_path / "out" / f"{stem}.mitoses.csv").stat().st_mtime_ns == before


def test_cli_evaluates_against_centroids_and_writes_a_pr_plot(
    tmp_path: Path, trained_detector, test_fields, capsys
) -> None:
    path, _ = trained_detector
    data = tmp_path / "test"
    write_fields(data, test_fields, "points")
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate-detector",
                str(data),
                "--model",
                str(path),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--overlap",
                "32",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "4 images, hit radius 8 µm" in printed and "F1-optimal threshold" in printed
    scores = json.loads(printed.strip().splitlines()[-1])  # the last line, machine-readable
    assert scores["tp"] + scores["fn"] == 12 and scores["n"] == 4
    assert scores["false_positives_per_image"] == scores["fp"] / 4
    assert {"recall", "precision", "f1", "threshold"} <= set(scores)
    rows = (out / "evaluation.csv").read_text().splitlines()
    assert rows[0] == "image,tp,fp,fn,precision,recall,f1,threshold" and len(rows) == 6
    tp, fp, fn = (int(v) for v in rows[-1].split(",")[1:4])
    assert tp + fn == 12  # every true centroid is counted once
    assert f"TP {tp}  FP {fp}  FN {fn}" in printed
    with Image.open(out / "precision_recall.png") as plot:
        assert plot.format == "PNG" and plot.size == (600, 600)


def test_bad_annotations_are_named_with_the_problem(tmp_path: Path, field_pairs) -> None:
    from napari_mitosis.io.mitosis_datasets import boxed_fields, coco_fields

    rgb = field_pairs[0][0]
    Image.fromarray(rgb).save(tmp_path / "a.png")
    csv = tmp_path / "a.boxes.csv"
    write_detections_csv(csv, Detections(np.array([[500.0, 500, 530, 530]])))
    with pytest.raises(ValueError, match=r"a\.boxes\.csv: box 1 .* lies outside the 384 × 384"):
        boxed_fields(tmp_path)
    csv.write_text("x,y,width,height\n10,10,0,5\n")
    with pytest.raises(ValueError, match=r"a\.boxes\.csv: line 2: zero or negative box size"):
        boxed_fields(tmp_path)
    # A box reaching past the edge is clipped; an empty file is a valid negative.
    write_detections_csv(csv, Detections(np.array([[370.0, -5, 400, 20]])), overwrite=True)
    ((_, boxes),) = boxed_fields(tmp_path)
    np.testing.assert_allclose(boxes, [[370, 0, 384, 20]])
    csv.write_text("x,y,width,height\n")
    ((_, boxes),) = boxed_fields(tmp_path)
    assert boxes.shape == (0, 4)
    csv.unlink()
    write_geojson(tmp_path / "a.geojson", [Annotation(np.array([[5.0, 5]]), "point", "Mitosis")])
    with pytest.raises(ValueError, match=r"feature 1 is a point; .*pseudo-masks"):
        boxed_fields(tmp_path)
    (tmp_path / "c.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"image_id": 7, "bbox": [1, 1, 5, 5]}],
            }
        )
    )
    with pytest.raises(ValueError, match=r"c\.json: annotation 1 names unknown image id 7"):
        coco_fields(tmp_path / "c.json")
    (tmp_path / "c.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "b.png"}]}))
    with pytest.raises(FileNotFoundError, match=r"1 of its 1 images are not in .*: b\.png"):
        coco_fields(tmp_path / "c.json")


def test_a_checkpoint_for_other_classes_is_refused_clearly(tmp_path: Path) -> None:
    from napari_mitosis.detection.training import DetectorTraining, train_detector
    from napari_mitosis.models.checkpoint import ModelCard, save_checkpoint
    from napari_mitosis.models.detector import faster_rcnn

    options = {"backbone": "mobilenet_v3", "tile": 64, "num_classes": 3}
    card = ModelCard(
        "faster_rcnn",
        options,
        task="detection",
        input_size=64,
        classes=("background", "mitosis", "look-alike"),
    )
    three = save_checkpoint(tmp_path / "three.safetensors", faster_rcnn(**options), card)
    field = (np.zeros((64, 64, 3), np.uint8), np.zeros((0, 4)))
    config = DetectorTraining(crop=64, max_steps=1, init=three, device="cpu")
    with pytest.raises(ValueError, match=r"three.safetensors: detects 2 classes .* has one"):
        train_detector([field], [(field[0], np.zeros((0, 2)))], tmp_path / "o.safetensors", config)
    assert not (tmp_path / "o.safetensors").exists()
    card.classes = ("background", "mitosis")  # a card that lies about its outputs
    liar = save_checkpoint(tmp_path / "liar.safetensors", faster_rcnn(**options), card)
    with pytest.raises(ValueError, match=r"card names 2 classes .* model has 3 outputs"):
        load_checkpoint(liar)


def test_backbone_weights_are_read_safely_from_a_local_file(tmp_path: Path) -> None:
    import torch
    from torchvision.models import mobilenet_v3_large

    from napari_mitosis.models.detector import faster_rcnn, load_backbone_weights

    classifier = mobilenet_v3_large(weights=None)
    torch.save(classifier.state_dict(), tmp_path / "imagenet.pth")
    detector = faster_rcnn(backbone="mobilenet_v3", tile=64)
    used = load_backbone_weights(detector, tmp_path / "imagenet.pth")
    assert used > 100
    first = detector.backbone.body.state_dict()["0.0.weight"]
    assert torch.equal(first, classifier.state_dict()["features.0.0.weight"])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth: not a readable weights file"):
        load_backbone_weights(detector, tmp_path / "junk.pth")


def test_vgg16_backbone_as_in_the_original_article() -> None:
    import torch

    from napari_mitosis.models.detector import faster_rcnn

    model = faster_rcnn(backbone="vgg16", tile=64).eval()
    assert model.backbone.out_channels == 512
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 64, 64)])
    assert set(out) == {"boxes", "scores", "labels"}


@pytest.mark.parametrize("output", ["rectangles (shapes)", "centres (points)"])
def test_widget_adds_scored_boxes_at_the_image_scale_with_a_density(
    make_napari_viewer, qtbot, trained_detector, test_fields, output: str, tmp_path, monkeypatch
) -> None:
    from conftest import crop_classifier
    from napari_mitosis._napari.detection_widget import DetectionWidget
    from napari_mitosis.cli import main
    from napari_mitosis.detection.candidates import score_candidates

    path, _ = trained_detector
    rgb, truth = test_fields[0]
    subtype = output.startswith("centres")  # points: each candidate subtyped too
    if subtype:  # a registered atypical classifier, offered by name in "subtype with"
        monkeypatch.setenv("NAPARI_MITOSIS_MODELS", str(tmp_path / "registry"))
        atypical = crop_classifier(tmp_path / "atypical.safetensors")
        assert main(["models", "import", str(atypical), "--name", "atypical"]) == 0
    viewer = make_napari_viewer()
    image = viewer.add_image(
        rgb, rgb=True, scale=(0.25, 0.25), name="hpf", metadata={"mpp": [0.25, 0.25]}
    )
    widget = DetectionWidget(viewer)
    widget.model_path.value = path
    widget.device.value = "cpu"
    widget.overlap.value = 32
    widget.output.value = output
    widget.image.value = image
    if subtype:
        assert list(widget.subtype.choices) == [None, "atypical"]
        widget.subtype.value = "atypical"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=5000)
    found = viewer.layers["hpf mitoses"]
    assert tuple(found.scale) == (0.25, 0.25)
    n = len(found.data)
    columns = ["score", "class", "p_atypical"] if subtype else ["score", "class"]
    assert n >= 2 and list(found.features.columns) == columns
    assert (found.features["score"] >= read_card(path).threshold).all()
    centres = (
        np.array([d.mean(axis=0) for d in found.data]) if output.startswith("rect") else found.data
    )
    result = match_detections(centres, truth.mitoses, max_distance=32)
    assert result.tp >= 2
    area = 384 * 384 * 0.25**2 / 1e6  # the whole field, mm²
    assert widget.status.value.startswith(f"{n} candidates")
    assert f" · {n / area:.1f}/mm²" in widget.status.value
    if subtype:  # the same probabilities as the core's subtype step gives
        from napari_mitosis.classification.predictor import ClassifierPredictor
        from napari_mitosis.models.checkpoint import load_checkpoint

        expected = score_candidates(
            rgb, centres, ClassifierPredictor(*load_checkpoint(atypical), "cpu"), mpp=0.25
        )
        np.testing.assert_allclose(found.features["p_atypical"], expected, atol=1e-5)
        assert "called atypical" in widget.status.value
        assert found.metadata["classifiers"]["p_atypical"]["model"] == "atypical"
    assert "/10 HPF" in widget.status.value and widget.run_button.enabled


def test_detection_widget_refuses_a_segmentation_model(make_napari_viewer, trained_unet) -> None:
    from napari_mitosis._napari.detection_widget import DetectionWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True)
    widget = DetectionWidget(viewer)
    widget.model_path.value = trained_unet[0]
    with pytest.raises(ValueError, match="is a segmentation model, not a detection model"):
        widget.run()


def test_cli_choices_match_the_core_and_the_parser_imports_no_torch() -> None:
    import subprocess
    import sys

    from napari_mitosis.classification.metrics import MONITORED
    from napari_mitosis.classification.training import ARCHITECTURES
    from napari_mitosis.cli import options as cli
    from napari_mitosis.models.detector import BACKBONES

    assert (cli.BACKBONES, cli.ARCHITECTURES, cli.MONITORED) == (
        BACKBONES,
        ARCHITECTURES,
        MONITORED,
    )
    probe = (
        "import sys; from napari_mitosis.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_widgets_say_what_a_model_was_trained_on_and_warn_when_synthetic_meets_real(
    make_napari_viewer, trained_detector, cmu_small, sample
) -> None:
    from napari.layers import Points

    from napari_mitosis._napari.detection_widget import DetectionWidget
    from napari_mitosis._napari.review_widget import ReviewWidget

    path, _ = trained_detector  # its card: "test model, synthetic data"
    viewer = make_napari_viewer()
    real = viewer.open(cmu_small, plugin="napari-mitosis")[0]
    synthetic = viewer.open(sample.path, plugin="napari-mitosis")[0]
    widget = DetectionWidget(viewer)
    widget.model_path.value = path
    widget.image.value = synthetic
    assert "trained on: test model, synthetic data" in widget.card_text.value
    assert "⚠" not in widget.card_text.value  # a synthetic model on a synthetic slide
    widget.image.value = real
    assert f"⚠ this model was trained on synthetic images; on the real slide {real.name}" in (
        widget.card_text.value
    )
    # Candidates a model made say so in the review widget, with the same warning.
    candidates = Points(
        [[100.0, 100.0]],
        features={"score": [0.9]},
        metadata={"model": {"name": str(path), "notes": "test model, synthetic data"}},
    )
    viewer.add_layer(candidates)
    review = ReviewWidget(viewer)
    review.image.value, review.candidates.value = real, candidates
    review.start()
    assert review.source.value.startswith(f"candidates from {path}; trained on: test model")
    assert "⚠ this model was trained on synthetic images" in review.source.value
