"""Crop classifiers on each candidate: the crop a classifier scores on a slide is the crop
it learnt from, columns travel through every format, and the CLI does it as documented."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import SHARED_DATA, crop_classifier
from napari_mitosis.classification.predictor import ClassifierPredictor
from napari_mitosis.cli import main
from napari_mitosis.detection.candidate_files import read_candidates
from napari_mitosis.detection.candidates import classify_candidates, score_candidates
from napari_mitosis.detection.report import summary
from napari_mitosis.detection.review import Review
from napari_mitosis.engine.tissue import TissueMask
from napari_mitosis.io.class_folders import resize_rgb
from napari_mitosis.io.detections import Detections
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import REVIEW_KEY, Annotation, read_geojson, write_geojson
from napari_mitosis.io.midog_points import read_midog_points
from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
from napari_mitosis.models.checkpoint import load_checkpoint

FIGURES = SHARED_DATA / "mitotic-figures"


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory):
    """A 0.25 µm/px field of random tissue-like noise and candidates, two at its edges."""
    folder = tmp_path_factory.mktemp("subtype")
    rng = np.random.default_rng(0)
    image = rng.integers(60, 230, (300, 400, 3), dtype=np.uint8)
    slide = write_pyramid_tiff(folder / "field.tif", image, mpp=(0.25, 0.25))
    centres = np.array([[150.0, 200.0], [40.5, 60.0], [3.0, 395.0], [297.0, 2.0]])
    return slide, image, centres, crop_classifier(folder / "atypical.safetensors")


def test_each_candidate_is_scored_on_the_crop_its_classifier_learnt_from(field) -> None:
    slide_path, image, centres, model_path = field
    model, card = load_checkpoint(model_path, task="classification")
    predictor = ClassifierPredictor(model, card, "cpu")
    with open_slide(slide_path) as slide:
        p = score_candidates(slide, centres, predictor, batch_size=3)
    # Inside the image: the central 32 px around the candidate, resized as training resizes.
    y, x = 150 - 16, 200 - 16
    expected = predictor(resize_rgb(image[y : y + 32, x : x + 32].copy(), 24)[None].copy())
    assert p.shape == (4,) and p[0] == pytest.approx(expected[0], abs=1e-6)
    # At the edge the tissue is mirrored, never filled with a colour the model never saw.
    corner = np.pad(image[0:19, 379:400], ((13, 0), (0, 11), (0, 0)), mode="symmetric")
    assert p[2] == pytest.approx(predictor(resize_rgb(corner, 24)[None].copy())[0], abs=1e-6)
    assert np.all((p >= 0) & (p <= 1))


def test_a_slide_at_half_the_resolution_is_read_at_the_classifiers_scale(
    field, tmp_path: Path
) -> None:
    _, image, centres, model_path = field
    seen: list[tuple[int, ...]] = []

    class Spy(ClassifierPredictor):
        def __call__(self, tiles):  # type: ignore[no-untyped-def]
            seen.append(tiles.shape)
            return super().__call__(tiles)

    predictor = Spy(*load_checkpoint(model_path, task="classification"), "cpu")
    half = write_pyramid_tiff(tmp_path / "half.tif", image[::2, ::2], mpp=(0.5, 0.5))
    with open_slide(half) as slide:  # level-0 pixels of this slide are twice as large
        p = score_candidates(slide, centres[:2] / 2, predictor)
    assert seen == [(2, 24, 24, 3)] and p.shape == (2,) and np.all((p > 0) & (p < 1))


def test_columns_travel_through_geojson_csv_and_midog_json_keeping_the_review(
    field, tmp_path: Path
) -> None:
    slide_path, _, centres, model_path = field
    boxes = np.concatenate([centres[:, ::-1] - 24, centres[:, ::-1] + 24], axis=1)
    features = Detections(boxes, [0.9, 0.8, 0.7, 0.6], mpp=(0.25, 0.25)).to_annotations()
    features[1].classification = "Mitosis"
    features[1].properties = {REVIEW_KEY: {"decision": "accepted", "reviewer": "ab"}, "id": "x1"}
    given = write_geojson(tmp_path / "in.geojson", features)
    out = tmp_path / "out"
    assert main(["subtype", str(slide_path), "--detections", str(given), "--model",
                 str(model_path), "--verify", str(model_path), "--out", str(out),
                 "--midog-json", "--device", "cpu"]) == 0  # fmt: skip
    written = read_geojson(out / "field.mitoses.geojson")
    assert [a.classification for a in written] == [a.classification for a in features]
    assert written[1].properties[REVIEW_KEY]["reviewer"] == "ab"
    assert written[1].properties["id"] == "x1"
    p = np.array([a.measurements["p_atypical"] for a in written])
    assert np.all((p > 0) & (p < 1)) and all("p_mitosis" in a.measurements for a in written)
    rows = list(csv.DictReader((out / "field.mitoses.csv").open()))
    assert [float(r["p_atypical"]) for r in rows] == pytest.approx(p, abs=1e-5)
    # The same run from the CSV and from the MIDOG file gives the same numbers.
    again = read_candidates(out / "field.mitoses.csv", mpp=(0.25, 0.25))
    np.testing.assert_allclose(again.detections.measurements["p_atypical"], p, atol=1e-5)
    points = read_midog_points(out / "field.mitotic-figures.json", mpp=(0.25, 0.25))
    np.testing.assert_allclose(points.centres, centres, atol=1e-6)
    content = json.loads((out / "field.mitotic-figures.json").read_text())
    assert content["type"] == "Multiple points"
    assert content["points"][0]["point"][0] == pytest.approx(200 * 0.25 / 1000)
    expected = ["atypical mitotic figure" if v >= 0.5 else "mitotic figure" for v in p]
    assert [q["name"] for q in content["points"]] == expected
    # A report on the subtyped candidates states the machine's atypical calls.
    review = Review.from_annotations(written)
    tissue = TissueMask(np.ones((30, 40), bool), (10.0, 10.0))
    numbers = summary(review, tissue, (0.25, 0.25))
    assert numbers["machine"]["atypical"] == int((p >= 0.5).sum())
    assert numbers["machine"]["atypical_fraction"] == pytest.approx((p >= 0.5).mean())


def test_the_verifier_drops_what_it_rejects_and_nothing_else_changes(field) -> None:
    slide_path, _, centres, model_path = field
    model, card = load_checkpoint(model_path, task="classification")
    verifier = ClassifierPredictor(model, card, "cpu")
    with open_slide(slide_path) as slide:
        scores = classify_candidates(slide, centres, verify=verifier, names=(None, "v"))
    p = scores.columns["p_mitosis"]
    threshold = float(np.median(p))
    scores.models["p_mitosis"]["threshold"] = threshold
    boxes = np.concatenate([centres[:, ::-1] - 5, centres[:, ::-1] + 5], axis=1)
    from napari_mitosis.detection.candidates import with_scores

    kept = with_scores(Detections(boxes), scores, drop_unverified=True)
    assert len(kept) == int((p >= threshold).sum()) and np.all(
        kept.measurements["p_mitosis"] >= threshold
    )
    assert scores.models["p_mitosis"]["model"] == "v"


@pytest.mark.skipif(not FIGURES.is_dir(), reason=f"{FIGURES} is not here")
def test_on_real_figures_subtype_reproduces_evaluate_classifiers_auc(tmp_path: Path) -> None:
    """Held-out real crops (AMi-Br, by slide) pasted into one field at known centres: the
    slide path and the crop path give each figure the same probability."""
    rows = list(csv.DictReader((FIGURES / "labels.csv").open()))
    slides = sorted({r["slide"] for r in rows})
    held = {s for s in slides[::6]}  # every sixth slide, never seen in training
    train_rows = [r for r in rows if r["slide"] not in held][::3]
    test_rows = [r for r in rows if r["slide"] in held][:120]
    for name, chosen in (("train", train_rows), ("test", test_rows)):
        for r in chosen:
            target = tmp_path / name / r["file"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(FIGURES / r["file"])
    model = tmp_path / "atypical.safetensors"
    assert main(["train-classifier", str(tmp_path / "train"), "--out", str(model),
                 "--classes", "normal", "atypical", "--centre-crop", "64", "--mpp", "0.25",
                 "--width", "8", "--depth", "3", "--epochs", "3", "--test-fraction", "0",
                 "--device", "cpu"]) == 0  # fmt: skip
    # The crop path.
    assert main(["evaluate-classifier", str(tmp_path / "test"), "--model", str(model),
                 "--out", str(tmp_path / "eval"), "--device", "cpu"]) == 0  # fmt: skip
    table = list(csv.DictReader((tmp_path / "eval" / "evaluation.csv").open()))
    by_file = {Path(r["file"]).name: float(r["score"]) for r in table}
    labels = np.array([r["label"] == "atypical" for r in table])
    crop_auc = roc_auc_score(labels, [float(r["score"]) for r in table])
    # The slide path: the same crops in a grid, 16 px of white between them.
    side, gap, per_row = 128, 16, 12
    n = len(test_rows)
    grid = np.full((-(-n // per_row) * (side + gap), per_row * (side + gap), 3), 255, np.uint8)
    points, truth, names = [], [], []
    from PIL import Image

    for i, r in enumerate(test_rows):
        y, x = (i // per_row) * (side + gap), (i % per_row) * (side + gap)
        grid[y : y + side, x : x + side] = np.asarray(
            Image.open(FIGURES / r["file"]).convert("RGB")
        )
        points.append(Annotation(np.array([[y + 64.0, x + 64.0]]), "point", "Mitosis candidate"))
        truth.append(r["file"].startswith("atypical"))
        names.append(Path(r["file"]).name)
    slide = write_pyramid_tiff(tmp_path / "figures.tif", grid, mpp=(0.25, 0.25))
    given = write_geojson(tmp_path / "figures.geojson", points)
    assert main(["subtype", str(slide), "--detections", str(given), "--model", str(model),
                 "--out", str(tmp_path / "out")]) == 0  # fmt: skip
    written = read_geojson(tmp_path / "out" / "figures.mitoses.geojson")
    p = np.array([a.measurements["p_atypical"] for a in written])
    np.testing.assert_allclose(p, [by_file[name] for name in names], atol=1e-4)
    assert roc_auc_score(truth, p) == pytest.approx(crop_auc, abs=0.01)
    assert labels.sum() > 5  # both classes are there: the AUC means something


def test_detect_subtypes_what_it_finds_in_one_go(
    sample, trained_detector, tmp_path: Path, capsys
) -> None:
    """`detect --subtype A --midog-json`, defaults otherwise, as the docs show it."""
    model = crop_classifier(tmp_path / "atypical.safetensors")
    out = tmp_path / "out"
    assert main(["detect", str(sample.path), "--model", str(trained_detector[0]), "--subtype",
                 str(model), "--midog-json", "--out", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    rows = list(csv.DictReader((out / f"{sample.path.stem}.mitoses.csv").open()))
    assert rows and all(0 < float(r["p_atypical"]) < 1 for r in rows)
    assert f"of {len(rows)} with p_atypical ≥ 0.5" in printed and "\\n" not in printed
    points = json.loads((out / f"{sample.path.stem}.mitotic-figures.json").read_text())
    assert len(points["points"]) == len(rows)
    # Candidates, named as such, with the detector that proposed them.
    features = read_geojson(out / f"{sample.path.stem}.mitoses.geojson")
    assert {(f.classification, f.properties["detector"]) for f in features} == {
        ("Mitosis candidate", trained_detector[0].name)
    }
