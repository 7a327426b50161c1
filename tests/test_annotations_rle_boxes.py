"""Given contest annotations, I get masks, COCO RLE that pycocotools reads, and boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from pycocotools import mask as coco_mask

from napari_mitosis.io.detections import (
    Detections,
    boxes_from_labels,
    mask_to_boxes,
    read_detections_csv,
    write_detections_csv,
)
from napari_mitosis.io.mitos_annotations import (
    read_icpr2012_labels,
    read_icpr2014_centroids,
    write_icpr2012_csv,
)
from napari_mitosis.io.rle import decode_rle, encode_rle, labels_to_coco, rle_counts

masks = arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40)))


@settings(max_examples=200, deadline=None)
@given(masks)
def test_rle_round_trip_is_exact(mask: np.ndarray) -> None:
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)
    counts = rle_counts(mask)
    np.testing.assert_array_equal(decode_rle({"size": list(mask.shape), "counts": counts}), mask)


@settings(max_examples=100, deadline=None)
@given(masks)
def test_rle_is_byte_identical_to_pycocotools(mask: np.ndarray) -> None:
    theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    ours = encode_rle(mask)
    assert ours["counts"] == theirs["counts"].decode() and ours["size"] == list(theirs["size"])
    np.testing.assert_array_equal(coco_mask.decode(theirs).astype(bool), decode_rle(ours))


def test_rle_counts_start_with_background_and_reject_wrong_sizes() -> None:
    mask = np.array([[1, 0], [1, 1]], bool)  # column-major: 1,1,0,1
    assert rle_counts(mask) == [0, 2, 1, 1]
    with pytest.raises(ValueError, match="cover 3 pixels"):
        decode_rle({"size": [2, 2], "counts": [1, 1, 1]})


def _icpr2012_line(pixels: list[tuple[int, int]]) -> str:
    return ",".join(f"{x},{y}" for y, x in pixels)  # the contest layout: x1,y1,x2,y2,…


def test_icpr2012_csv_becomes_one_label_per_mitosis(tmp_path: Path) -> None:
    first = [(10, 20), (10, 21), (11, 20)]  # (y, x)
    second = [(40, 5), (41, 5)]
    csv = tmp_path / "A00_00.csv"
    csv.write_text(_icpr2012_line(first) + "\n" + _icpr2012_line(second) + "\n")
    labels = read_icpr2012_labels(csv, (50, 60))
    assert labels.max() == 2
    assert {tuple(p) for p in np.argwhere(labels == 1)} == set(first)
    assert {tuple(p) for p in np.argwhere(labels == 2)} == set(second)
    again = read_icpr2012_labels(write_icpr2012_csv(tmp_path / "copy.csv", labels), (50, 60))
    np.testing.assert_array_equal(again, labels)


def test_an_empty_icpr2012_csv_is_an_image_without_mitoses(tmp_path: Path) -> None:
    csv = tmp_path / "A01_02.csv"
    csv.write_text("")
    assert not read_icpr2012_labels(csv, (20, 20)).any()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("70,3,71,3\n", r"line 1 has pixel \(x=70, y=3\) outside the 60 × 50 image"),
        ("1,2,3\n", "line 1 has an odd number of coordinates"),
        ("1,2\nten,4\n", "line 2 is not a list of numbers"),
    ],
)
def test_bad_icpr2012_csv_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    csv = tmp_path / "bad.csv"
    csv.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        read_icpr2012_labels(csv, (50, 60))
    assert str(csv) in str(info.value)


def test_icpr2014_centroids_read_as_yx_with_confidence(tmp_path: Path) -> None:
    csv = tmp_path / "A03_00Aa_mitosis.csv"
    csv.write_text("120,45,1\n30,200,0.66\n")
    points, confidence = read_icpr2014_centroids(csv, shape=(300, 300))
    np.testing.assert_array_equal(points, [[45, 120], [200, 30]])
    np.testing.assert_allclose(confidence, [1.0, 0.66])
    with pytest.raises(ValueError, match="outside the 100 × 100 image"):
        read_icpr2014_centroids(csv, shape=(100, 100))


def test_masks_become_one_box_per_component() -> None:
    mask = np.zeros((40, 50), bool)
    mask[5:10, 8:20] = True  # 5 × 12
    mask[30:32, 40:41] = True  # a 2-pixel speck
    boxes = mask_to_boxes(mask)
    np.testing.assert_array_equal(boxes.boxes, [[8, 5, 20, 10], [40, 30, 41, 32]])
    assert len(mask_to_boxes(mask, min_area=10)) == 1
    assert len(mask_to_boxes(np.zeros((5, 5), bool))) == 0
    labels = np.zeros((10, 10), int)
    labels[1:3, 1:3] = 4
    np.testing.assert_array_equal(boxes_from_labels(labels).boxes, [[1, 1, 3, 3]])


def test_coco_annotations_carry_rle_bbox_and_area() -> None:
    labels = np.zeros((20, 30), np.uint16)
    labels[2:6, 3:10] = 1
    (annotation,) = labels_to_coco(labels)
    assert annotation["bbox"] == [3, 2, 7, 4] and annotation["area"] == 28
    np.testing.assert_array_equal(decode_rle(annotation["segmentation"]), labels == 1)
    json.dumps(annotation)  # plain JSON


def test_boxes_csv_round_trip_keeps_every_box_in_pixels_and_um(tmp_path: Path) -> None:
    detections = Detections(
        [[10, 20, 30, 50], [0, 0, 5, 5]], [0.9, 0.4], ["Mitosis", "Mitosis"], mpp=(0.25, 0.25)
    )
    path = write_detections_csv(tmp_path / "boxes.csv", detections)
    header, first = path.read_text().splitlines()[:2]
    assert header == "x,y,width,height,score,class,x_um,y_um,width_um,height_um"
    assert first == "10,20,20,30,0.9,Mitosis,2.5,5,5,7.5"
    back = read_detections_csv(path)
    np.testing.assert_allclose(back.boxes, detections.boxes)
    np.testing.assert_allclose(back.scores, detections.scores)


def test_zero_area_boxes_in_a_csv_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("x,y,width,height,score\n1,2,0,4,0.5\n")
    with pytest.raises(ValueError, match=r"bad\.csv: line 2: zero or negative box size"):
        read_detections_csv(path)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 60), st.integers(1, 60)),
        elements=st.floats(0, 1, width=32),
    ),
    st.integers(1, 16),
)
def test_banded_labelling_equals_whole_image_labelling(values: np.ndarray, band: int) -> None:
    from skimage.measure import label

    from napari_mitosis.engine.components import label_components

    found = label_components(values, 0.6, band=band)
    reference = label(values >= 0.6, connectivity=2)
    assert found.labels.max() == reference.max() == len(found.boxes)
    # Same partition of the pixels, whatever the numbering.
    assert len(set(zip(found.labels.ravel(), reference.ravel(), strict=True))) == len(
        np.unique(reference)
    )
    np.testing.assert_array_equal(np.sort(found.areas), np.sort(np.bincount(reference.ravel())[1:]))
    boxes = boxes_from_labels(reference).boxes
    np.testing.assert_array_equal(np.unique(found.boxes, axis=0), np.unique(boxes, axis=0))


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 30), st.integers(1, 30)), elements=st.integers(0, 3))
)
def test_coco_annotations_of_every_label_match_pycocotools(labels: np.ndarray) -> None:
    annotations = labels_to_coco(labels)
    assert [a["id"] for a in annotations] == sorted(set(np.unique(labels)) - {0})
    for annotation in annotations:
        mask = labels == annotation["id"]
        theirs = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert annotation["segmentation"]["counts"] == theirs["counts"].decode()
        assert annotation["area"] == mask.sum()
