"""MIDOG's COCO databases: the real MIDOG++ file read as its authors wrote it (corner
boxes, imposters, tumour types), converted to QuPath GeoJSON, and used as evaluation data
with synthetic images of known truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import SHARED_DATA
from napari_mitosis.cli import main
from napari_mitosis.io.coco import read_coco, split_by_image
from napari_mitosis.io.detections import mask_to_boxes
from napari_mitosis.io.geojson import read_geojson
from napari_mitosis.io.mitosis_datasets import coco_fields

MIDOG_PP = SHARED_DATA / "midog" / "MIDOG++.json"


@pytest.fixture(scope="module")
def midog_pp() -> Path:
    if not MIDOG_PP.exists():
        pytest.skip(f"{MIDOG_PP} is not here (../shared/data is beside the repo in CI)")
    return MIDOG_PP


def test_the_real_midog_database_reads_as_corner_boxes_with_imposters_apart(midog_pp) -> None:
    database = read_coco(midog_pp)
    raw = json.loads(midog_pp.read_text())
    assert database.box_format == "xyxy" and len(database.images) == 553
    mitoses = sum(len(i.mitoses) for i in database.images)
    imposters = sum(len(i.imposters) for i in database.images)
    by_category = [sum(a["category_id"] == c for a in raw["annotations"]) for c in (1, 2)]
    assert (mitoses, imposters) == tuple(by_category) == (11937, len(raw["annotations"]) - 11937)
    every = np.vstack([b for i in database.images for b in (i.mitoses, i.imposters)])
    np.testing.assert_array_equal(every[:, 2:] - every[:, :2], 50)  # 50 × 50 px, as published
    for image in database.images:  # every box overlaps its image (a few run over its edge)
        for boxes in (image.mitoses, image.imposters):
            assert (boxes[:, 2:] > 0).all()
            assert (boxes[:, :2] < [image.width, image.height]).all()
    breast = database.select(["Human Breast Cancer"])
    assert len(breast.images) == 200 and database.tumour_types()["human breast cancer"] == 200
    with pytest.raises(ValueError, match="no image of tumour type ovary"):
        database.select(["ovary"])
    # A split by image holds out a share of every tumour type.
    train, held = split_by_image(database, 0.2, seed=0)
    assert not set(train) & set(held) and len(train) + len(held) == 553
    assert {database.images[i].tumour_type for i in held} == set(database.tumour_types())


def test_convert_midog_writes_one_geojson_per_image_that_reads_back_as_a_review(
    midog_pp, tmp_path: Path, capsys
) -> None:
    from napari_mitosis.detection.review import Review

    out = tmp_path / "geojson"
    args = ["convert-midog", str(midog_pp), "--out", str(out), "--tumour-type", "human melanoma"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    files = sorted(out.glob("*.geojson"))
    database = read_coco(midog_pp).select(["human melanoma"])
    assert len(files) == len(database.images) == 49 and "49 images (human melanoma 49)" in printed
    first = database.images[0]
    review = Review.from_annotations(read_geojson(out / f"{Path(first.file_name).stem}.geojson"))
    counts = review.counts()
    assert (counts["accepted"], counts["rejected"]) == (len(first.mitoses), len(first.imposters))
    centres = (first.mitoses[:, [1, 0]] + first.mitoses[:, [3, 2]]) / 2
    np.testing.assert_allclose(review.centres[: len(centres)], centres)
    assert main(args) == 2  # written files are not replaced unless asked
    assert "already exists" in capsys.readouterr().err


def _midog_style(folder: Path, pairs, *, tumour_types: list[str]) -> Path:
    """Fields as MIDOG publishes its data: images in a folder, one COCO JSON with corner
    boxes (50 px here 12 µm), imposters at the look-alikes, a tumour type per image."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, ((rgb, truth), kind) in enumerate(zip(pairs, tumour_types, strict=True)):
        Image.fromarray(rgb).save(folder / f"{i:03d}.tiff")
        images.append({"id": i + 1, "file_name": f"{i:03d}.tiff", "width": rgb.shape[1],
                       "height": rgb.shape[0], "tumor_type": kind})  # fmt: skip
        for category, centres in ((1, truth.mitoses), (2, truth.distractors)):
            for y, x in np.asarray(centres).reshape(-1, 2):
                box = [x - 24, y - 24, x + 24, y + 24]
                annotations.append({"image_id": i + 1, "category_id": category, "bbox": box})
    categories = [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "not mitotic figure"}]
    path = folder / "database.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": categories}))  # fmt: skip
    return path


def test_imposters_are_hard_negatives_and_missing_images_are_named(
    tmp_path: Path, field_pairs
) -> None:
    pairs = field_pairs[:3]
    path = _midog_style(tmp_path / "midog", pairs, tumour_types=["a", "a", "b"])
    fields = coco_fields(path)
    for (field, boxes), (_, truth) in zip(fields, pairs, strict=True):
        np.testing.assert_allclose((boxes[:, [1, 0]] + boxes[:, [3, 2]]) / 2, truth.mitoses)
        np.testing.assert_allclose(field.negatives, truth.distractors.reshape(-1, 2))
    assert [f.group for f, _ in fields] == ["a", "a", "b"]
    assert len(coco_fields(path, tumour_types=["b"])) == 1
    (tmp_path / "midog" / "000.tiff").unlink()
    (tmp_path / "midog" / "002.tiff").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of its 3 images are not in .*000.tiff, 002"):
        coco_fields(path)
    # COCO's own layout (x, y, w, h) is read as such.
    _, truth = pairs[1]
    xywh = [
        [x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in mask_to_boxes(truth.mitosis_mask).boxes
    ]
    plain = {"images": [{"id": 7, "file_name": "001.tiff"}], "categories": [{"id": 1, "name": "mitosis"}],
             "annotations": [{"image_id": 7, "category_id": 1, "bbox": b} for b in xywh]}  # fmt: skip
    (tmp_path / "midog" / "plain.json").write_text(json.dumps(plain))
    ((_, boxes),) = coco_fields(tmp_path / "midog" / "plain.json")
    np.testing.assert_allclose(boxes, mask_to_boxes(truth.mitosis_mask).boxes)


def test_evaluate_detector_on_a_midog_database_prints_midogs_table(
    tmp_path: Path, trained_detector, field_pairs, capsys
) -> None:
    """`evaluate-detector FOLDER --coco FILE --radius-um 7.5`: per image, per tumour type
    and overall, with the truth the figures' box centres (imposters never counted)."""
    pairs = field_pairs[4:6]
    path = _midog_style(tmp_path / "midog", pairs, tumour_types=["breast", "melanoma"])
    out = tmp_path / "eval"
    args = ["evaluate-detector", str(tmp_path / "midog"), "--coco", str(path), "--model",
            str(trained_detector[0]), "--radius-um", "7.5", "--out", str(out), "--json"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    scores = json.loads(printed.strip().splitlines()[-1])
    lines = printed.splitlines()
    assert lines[0].split() == ["image", "TP", "FP", "FN", "precision", "recall", "F1"]
    rows = {line.split()[0]: line.split()[1:4] for line in lines[1:5]}
    assert set(rows) == {"000.tiff", "001.tiff", "[breast]", "[melanoma]"}
    assert rows["[breast]"] == rows["000.tiff"] and rows["[melanoma]"] == rows["001.tiff"]
    overall = next(line.split() for line in lines if line.startswith("overall"))
    assert [int(v) for v in overall[1:4]] == [scores["tp"], scores["fp"], scores["fn"]]
    assert scores["tp"] + scores["fn"] == sum(len(t.mitoses) for _, t in pairs)
    assert "hit radius 7.5 µm" in printed and scores["n"] == 2
