"""Reviewing mitosis candidates: the grading table, the review state, real key presses in
napari (decisions in features, counts, hotspot, camera), saving and resuming, undo, and the
report's numbers on a review with a known answer."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from napari_mitosis._napari.viewer_parts import camera
from napari_mitosis.cli import main
from napari_mitosis.detection.grading import (
    FIELD_DIAMETER_TABLE,
    field_area_mm2,
    grade,
    mitotic_score,
)
from napari_mitosis.detection.review import QUPATH_CLASSES, Review
from napari_mitosis.engine.tissue import TissueMask
from napari_mitosis.io.errors import OutputExistsError
from napari_mitosis.io.geojson import Annotation, read_geojson, write_geojson


@pytest.mark.parametrize(
    ("diameter", "score_1_max", "score_2_max"),
    [(0.40, 4, 9), (0.44, 5, 11), (0.50, 7, 14), (0.55, 8, 17), (0.59, 9, 19), (0.69, 13, 27)],
)
def test_the_mitotic_score_follows_the_table_by_field_diameter(
    diameter: float, score_1_max: int, score_2_max: int
) -> None:
    assert FIELD_DIAMETER_TABLE[diameter] == (score_1_max, score_2_max)
    assert mitotic_score(0, diameter) == 1
    assert mitotic_score(score_1_max, diameter) == 1
    assert mitotic_score(score_1_max + 1, diameter) == 2
    assert mitotic_score(score_2_max, diameter) == 2
    assert mitotic_score(score_2_max + 1, diameter) == 3
    assert mitotic_score(score_2_max + 0.5, diameter) == 2  # whole figures are counted
    # Every row: cut-offs grow with the field's area and never fall.
    rows = [FIELD_DIAMETER_TABLE[d] for d in sorted(FIELD_DIAMETER_TABLE)]
    assert all(a <= b for (a, _), (b, _) in itertools.pairwise(rows))
    with pytest.raises(ValueError, match="outside the grading table"):
        mitotic_score(3, 0.8)


def test_grading_counts_the_hotspot_in_ten_fields_of_the_given_diameter() -> None:
    # 10 mm × 10 mm of tissue at 1 µm/px (cells of 100 px); 20 mitoses packed in one corner
    # field, 5 spread elsewhere.
    tissue = TissueMask(np.ones((100, 100), bool), (100.0, 100.0))
    rng = np.random.default_rng(0)
    packed = rng.uniform(200, 1200, (20, 2))
    spread = np.array([[5000, 5000], [8000, 2000], [3000, 8000], [9000, 9000], [6000, 7000]])
    result = grade(np.vstack([packed, spread]), tissue, (1.0, 1.0), diameter_mm=0.55)
    assert result["mitoses"] == 25 and result["area_mm2"] == pytest.approx(100.0)
    assert result["per_mm2"] == pytest.approx(0.25)
    # The window is whole tissue cells (15 × 100 µm a side for 10 fields of 0.55 mm):
    # its count is scaled to 10 fields' area.
    assert result["hotspot_count"] == 20
    ten_fields = 10 * field_area_mm2(0.55)
    expected = 20 * ten_fields / result["hotspot_area_mm2"]
    assert result["hotspot_per_10_hpf"] == pytest.approx(expected)
    assert result["hotspot_side_um"] == pytest.approx(math.sqrt(10 * field_area_mm2(0.55)) * 1e3)
    assert result["mitotic_score"] == 3  # ≥ 18 per 10 HPF of 0.55 mm
    assert grade(spread, tissue, (1.0, 1.0))["mitotic_score"] == 1


def test_review_state_orders_decides_undoes_and_round_trips_through_geojson(tmp_path: Path) -> None:
    review = Review(
        np.array([[10, 10], [20, 20], [30, 30]]), np.array([0.5, 0.9, 0.7]), reviewer="ab"
    )
    assert review.order("score").tolist() == [1, 2, 0]
    review.decide(1, "accepted")
    review.decide(2, "atypical")
    assert review.order("unreviewed").tolist() == [0, 1, 2]
    added = review.add((40, 40))
    assert review.counts() == {
        "accepted": 2,
        "rejected": 0,
        "atypical": 1,
        "unsure": 0,
        "unreviewed": 1,
        "mitoses": 3,
    }
    assert review.undo().added and len(review) == 3
    review.decide(0, "rejected")
    assert review.undo().index == 0 and review.decisions[0] == ""
    assert added == 3 and review.progress() == "2 of 3 reviewed"
    assert review.shown("atypical").tolist() == [False, False, True]
    assert review.shown("unreviewed").tolist() == [True, False, False]
    assert review.shown("all").all()
    path = write_geojson(tmp_path / "r.geojson", review.to_annotations())
    again = Review.from_annotations(read_geojson(path))
    assert again.decisions.tolist() == ["", "accepted", "atypical"]
    assert again.reviewers.tolist() == ["", "ab", "ab"] and again.times[1] == review.times[1]
    assert [a.classification for a in read_geojson(path)] == [
        "Mitosis candidate",
        "Mitosis",
        "Atypical mitosis",
    ]
    np.testing.assert_allclose(again.scores, review.scores)


def candidates_geojson(path: Path, centres: np.ndarray, scores: np.ndarray) -> Path:
    shapes = [
        Annotation(np.array([c]), "point", "Mitosis candidate", {"score": float(s)}, "detection")
        for c, s in zip(centres, scores, strict=True)
    ]
    return write_geojson(path, shapes)


def test_reviewing_with_real_keys_in_napari_saves_resumes_and_undoes(
    make_napari_viewer, qtbot, cmu_small: Path, tmp_path: Path
) -> None:
    from qtpy.QtCore import Qt

    from napari_mitosis._napari.review_widget import ReviewWidget

    rng = np.random.default_rng(1)
    centres = np.column_stack([rng.uniform(300, 2000, 12), rng.uniform(300, 2600, 12)])
    scores = np.linspace(0.99, 0.4, 12)
    path = candidates_geojson(tmp_path / "candidates.geojson", centres, scores)
    viewer = make_napari_viewer(show=True)
    (image,) = viewer.open(str(cmu_small), plugin="napari-mitosis")
    (points,) = viewer.open(str(path), plugin="napari-mitosis")
    widget = ReviewWidget(viewer)
    widget.image.value, widget.candidates.value = image, points
    widget.reviewer.value = "dr-k"
    widget.start()
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    keys = [
        Qt.Key_A,
        Qt.Key_A,
        Qt.Key_R,
        Qt.Key_T,
        Qt.Key_U,
        Qt.Key_A,
        Qt.Key_R,
        Qt.Key_A,
        Qt.Key_A,
        Qt.Key_R,
    ]
    for key in keys:
        qtbot.keyClick(canvas, key)
    expected = [
        "accepted",
        "accepted",
        "rejected",
        "atypical",
        "unsure",
        "accepted",
        "rejected",
        "accepted",
        "accepted",
        "rejected",
        "",
        "",
    ]
    assert points.features["review"].tolist() == expected  # in score order = file order here
    assert set(points.features["reviewer"][:10]) == {"dr-k"}
    assert widget.review.counts()["mitoses"] == 6 and "10 of 12 reviewed" in widget.progress.value
    # The view is on the 11th candidate (the next to review), 64 µm wide.
    world = np.asarray(points.data_to_world(centres[10]))[-2:]
    np.testing.assert_allclose(camera(viewer).center[-2:], world, atol=1e-6)
    assert points.selected_data == {10}
    # The hotspot layer and the score follow the decisions.
    hotspot = viewer.layers[f"{image.name} hotspot (10 HPF)"]
    graded = widget.grading
    assert graded["mitoses"] == 6
    # The small region holds less than 10 fields of tissue: its count is per 10 HPF of it.
    assert graded["hotspot_per_10_hpf"] == pytest.approx(
        graded["hotspot_count"] * 10 * field_area_mm2(0.55) / graded["hotspot_area_mm2"]
    )
    assert graded["mitotic_score"] == mitotic_score(graded["hotspot_per_10_hpf"], 0.55)
    assert f"mitotic score {graded['mitotic_score']}" in widget.counts.value
    assert len(hotspot.data) == 1
    # Backspace undoes the last decision; p goes back.
    qtbot.keyClick(canvas, Qt.Key_Backspace)
    assert points.features["review"][9] == "" and widget.current() == 9
    qtbot.keyClick(canvas, Qt.Key_R)
    # Saved, reopened in a new layer, the same state comes back.
    saved = widget.save(tmp_path / "reviewed.geojson")
    viewer.layers.remove(points)
    (again,) = viewer.open(str(saved), plugin="napari-mitosis")
    widget.candidates.value = again
    review = widget.start()
    assert review.decisions.tolist() == expected
    assert again.features["review"].tolist() == expected
    assert {a.classification for a in read_geojson(saved)} == {QUPATH_CLASSES[d] for d in expected}
    # Saving again over the review's own file resumes; another existing file is refused
    # and left as it was.
    assert widget.save(saved) == saved
    other = tmp_path / "someone-elses.geojson"
    other.write_text('{"type": "FeatureCollection", "features": []}')
    with pytest.raises(OutputExistsError, match=r"someone-elses\.geojson"):
        widget.save(other)
    assert other.read_text() == '{"type": "FeatureCollection", "features": []}'
    # The widget's report button: the same numbers as the counts line.
    numbers = widget.report(tmp_path / "report.html")
    assert numbers["mitoses"] == 6 and numbers["mitotic_score"] == graded["mitotic_score"]
    assert "Mitotic count" in (tmp_path / "report.html").read_text()
    # napari's own File → Save Layers writes the same review.
    from napari_mitosis._napari.writer import write_points_geojson

    state = {k: getattr(again, k) for k in ("features", "scale", "translate", "metadata")}
    (written,) = write_points_geojson(str(tmp_path / "saved-by-napari.geojson"), again.data, state)
    assert Review.from_annotations(read_geojson(written)).decisions.tolist() == expected


def test_a_missed_mitosis_is_added_with_a_click_and_undone(
    make_napari_viewer, cmu_small: Path, tmp_path: Path
) -> None:
    from napari_mitosis._napari.review_widget import ReviewWidget

    path = candidates_geojson(tmp_path / "c.geojson", np.array([[500.0, 500.0]]), np.array([0.9]))
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(cmu_small), plugin="napari-mitosis")
    (points,) = viewer.open(str(path), plugin="napari-mitosis")
    widget = ReviewWidget(viewer)
    widget.image.value, widget.candidates.value = image, points
    widget.start()
    # Add mode puts the click handler on the layer; a press-and-release adds there.
    widget.add_mode.value = True
    assert widget._on_click in points.mouse_drag_callbacks
    click = SimpleNamespace(position=tuple(points.data_to_world((800.0, 900.0))))
    handler = widget._on_click(points, click)
    next(handler)  # the press
    with pytest.raises(StopIteration):
        next(handler)  # the release adds the figure
    np.testing.assert_allclose(points.data[1], (800.0, 900.0))
    assert len(points.data) == 2 and len(widget.review) == 2
    widget.show.value = "accepted"  # the filter hides every other candidate
    assert points.shown.tolist() == [False, True]
    widget.show.value = "all"
    assert points.features["review"][1] == "accepted" and bool(points.features["added"][1])
    widget.act("undo")
    assert len(points.data) == 1 and len(widget.review) == 1


def test_the_report_gives_the_known_numbers(cmu_small: Path, tmp_path: Path, capsys) -> None:
    # Points on the region's tissue (its tissue mask, checked below).
    centres = np.array([[2667, 1449], [637, 1471], [1965, 1719], [1351, 1197], [385, 959]], float)
    review = Review(np.vstack([centres, [[1243.0, 967.0]]]), np.full(6, 0.8))
    for index, decision in enumerate(["accepted", "accepted", "atypical", "rejected", "unsure"]):
        review.decide(index, decision)
    path = write_geojson(tmp_path / "reviewed.geojson", review.to_annotations())
    out = tmp_path / "report.html"
    code = main(["report", str(cmu_small), "--detections", str(path), "--out", str(out), "--json"])
    assert code == 0
    printed = capsys.readouterr().out
    numbers = json.loads(printed.strip().splitlines()[-1])
    assert (numbers["mitoses"], numbers["atypical"], numbers["rejected"]) == (3, 1, 1)
    # The model's own count is given apart, as a machine count: all six taken as mitoses.
    assert numbers["machine"]["candidates"] == 6
    assert numbers["machine"]["per_mm2"] == pytest.approx(6 / numbers["area_mm2"])
    assert "1 of 6 candidates are not reviewed" in printed and "a machine count" in printed
    assert (numbers["unsure"], numbers["unreviewed"]) == (1, 1)
    assert numbers["per_mm2"] == pytest.approx(3 / numbers["area_mm2"])
    # The region is smaller than 10 fields: one window over all of it, holding all three.
    assert numbers["hotspot"]["count"] == 3
    expected = 3 * 10 * field_area_mm2(0.55) / numbers["area_mm2"]
    assert numbers["hotspot"]["per_10_hpf"] == pytest.approx(expected, rel=0.02)
    assert numbers["mitotic_score"] == mitotic_score(numbers["hotspot"]["per_10_hpf"])
    page = out.read_text()
    assert page.count('<img src="data:image/png;base64,') == 1 + 3  # thumbnail + gallery
    assert "Atypical mitosis (1)" in page and "Mitosis (2)" in page
    assert "Machine count (the model&#x27;s candidates, unreviewed)" in page
    assert main(["report", str(cmu_small), "--detections", str(path), "--out", str(out)]) == 2


def test_a_reviewed_geojson_is_training_data_with_hard_negatives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    from napari_mitosis.detection.training import BoxCropSampler, DetectorTraining
    from napari_mitosis.io.mitosis_datasets import boxed_fields

    Image.fromarray(np.full((400, 400, 3), 200, np.uint8)).save(tmp_path / "f1.png")
    review = Review(
        np.array([[100, 100], [200, 300], [300, 100], [350, 350], [50, 300]]),
        np.array([0.9, 0.8, 0.7, 0.6, 0.5]),
    )
    for index, decision in enumerate(["accepted", "atypical", "rejected", "unsure"]):
        review.decide(index, decision)
    write_geojson(tmp_path / "f1.geojson", review.to_annotations())
    ((field, boxes),) = boxed_fields(tmp_path)
    # Accepted and atypical points become 12 µm boxes (48 px at 0.25 µm/px); the rejected
    # look-alike is a hard negative; unsure and unreviewed candidates are left out.
    np.testing.assert_allclose(boxes, [[76, 76, 124, 124], [276, 176, 324, 224]])
    np.testing.assert_allclose(field.negatives, [[300, 100]])
    config = DetectorTraining(
        crop=64, batch_size=1, positive_fraction=0.0, hard_negative_fraction=1.0
    )
    sampler = BoxCropSampler(
        [(field.image, boxes, field.negatives)], config, np.random.default_rng(0)
    )
    sampler.augment = lambda image, target: (image, target)  # where the crop lies, unturned
    import napari_mitosis.detection.training as training

    centres = []
    original = training.crop_origin

    def spy(rng, shape, crop, centre):
        centres.append(centre)
        return original(rng, shape, crop, centre)

    monkeypatch.setattr(training, "crop_origin", spy)
    for _ in range(5):
        _, target = sampler._crop()
        assert len(target["boxes"]) == 0  # no box on a look-alike
    assert centres == [(300.0, 100.0)] * 5


def test_a_models_output_is_reported_as_candidates_not_as_a_pathologists_mitoses(
    cmu_small: Path, tmp_path: Path, capsys
) -> None:
    from napari_mitosis.io.detections import Detections

    centres = np.array([[2667, 1449], [637, 1471], [1965, 1719]], float)
    boxes = np.c_[centres[:, ::-1] - 12, centres[:, ::-1] + 12]
    found = Detections(boxes, np.array([0.9, 0.8, 0.7]))  # as detect and run write them
    path = write_geojson(tmp_path / "s0.mitoses.geojson", found.to_annotations())
    assert {a.classification for a in read_geojson(path)} == {"Mitosis candidate"}
    out = tmp_path / "report.html"
    assert main(["report", str(cmu_small), "--detections", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ": 0 mitoses (0 atypical), 0 rejected, 3 not reviewed" in printed
    assert "machine count: 3 candidates, 0 reviewed; the grade counts reviewed mitoses only" in (
        printed
    )
    assert "3 of 3 candidates are not reviewed" in printed
    page = out.read_text()
    assert "— (nobody reviewed these candidates)" in page and 'class="basis"' in page
    # Counting them is asked for by name, and the grade then says it is a machine estimate.
    args = ["report", str(cmu_small), "--detections", str(path), "--out", str(out)]
    assert main([*args, "--count-unreviewed", "--overwrite", "--json"]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads(printed.strip().splitlines()[-1])
    assert (numbers["basis"], numbers["counted"], numbers["mitoses"]) == ("machine estimate", 3, 0)
    assert numbers["hotspot"]["count"] == 3
    assert numbers["mitotic_score"] == numbers["machine"]["mitotic_score"]
    assert "(a machine estimate)" in printed and "counted as mitoses" in printed
    assert "a machine estimate: unreviewed candidates counted" in out.read_text()
    # An older writer's machine output ("Mitosis" with a score, no review record) is read
    # as candidates; a "Mitosis" drawn by hand (no score) is a pathologist's.
    old = [Annotation(c[None], "point", "Mitosis", {"score": 0.9}) for c in centres]
    hand = [Annotation(c[None], "point", "Mitosis") for c in centres]
    assert Review.from_annotations(old).counts()["unreviewed"] == 3
    assert Review.from_annotations(hand).counts()["mitoses"] == 3


def test_the_review_starts_when_candidates_are_chosen_and_keys_work_at_once(
    make_napari_viewer,
) -> None:
    from napari_mitosis._napari.review_widget import ReviewWidget

    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.integers(0, 255, (400, 400, 3), dtype=np.uint8), rgb=True)
    first = viewer.add_points([[50.0, 50.0], [300.0, 300.0]], features={"score": [0.4, 0.9]})
    widget = ReviewWidget(viewer)  # docked with candidates open: no start button to press
    assert widget.review is not None and widget.layer is first
    assert widget.current() == 1  # the highest score first, selected
    widget.reviewer.value = "dr-k"
    widget.act("accepted")
    assert first.features["review"].tolist() == ["", "accepted"]
    assert first.features["reviewer"].tolist()[1] == "dr-k"
    second = viewer.add_points([[100.0, 200.0]], features={"score": [0.7]})
    widget.candidates.value = second
    assert widget.layer is second and widget.current() == 0
    widget.candidates.value = first  # back: the decision made is still there
    assert widget.review.decisions.tolist() == ["", "accepted"]


def test_the_gallery_shows_each_candidate_and_a_click_and_keys_decide(
    make_napari_viewer, qtbot
) -> None:
    """Thumbnails in review order, framed by decision; a click jumps, keys act in the
    gallery as on the canvas; sorting by p_atypical; only thumbnails in view are read."""
    from qtpy.QtCore import Qt

    from napari_mitosis._napari.review_widget import ReviewWidget

    viewer = make_napari_viewer(show=True)
    image = np.zeros((600, 600, 3), np.uint8)
    centres = np.array([[100.0, 100.0], [300.0, 450.0], [500.0, 200.0]])
    for k, (y, x) in enumerate(centres.astype(int)):  # each candidate a colour of its own
        image[y - 20 : y + 20, x - 20 : x + 20, k] = 255
    viewer.add_image(image, rgb=True, metadata={"mpp": (0.5, 0.5)})
    viewer.add_points(centres, features={"score": [0.9, 0.5, 0.7], "p_atypical": [0.1, 0.8, 0.3]})
    widget = ReviewWidget(viewer)
    gallery = widget.gallery
    assert gallery.count() == 3 and widget.settings.native.isHidden()  # the long form folded
    order = [gallery.item(r).data(Qt.ItemDataRole.UserRole) for r in range(3)]
    assert order == [0, 2, 1]  # by score
    assert gallery.item(2).text() == "0.50 · a 0.80"
    # Each thumbnail is its own candidate's crop (48 px = 24 µm at 0.5 µm/px).
    for index, k in enumerate((0, 1, 2)):
        thumb = gallery.pixels[index]
        assert thumb.shape == (48, 48, 3) and thumb[24, 24, k] == 255
    assert gallery.currentItem().data(Qt.ItemDataRole.UserRole) == 0  # the current one
    # A click jumps to that candidate; keys pressed in the gallery decide on it.
    rect = gallery.visualItemRect(gallery.item(2))
    qtbot.mouseClick(gallery.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert widget.current() == 1
    qtbot.keyClick(gallery, Qt.Key.Key_T)
    assert widget.review.decisions.tolist() == ["", "atypical", ""]
    assert widget.layer.features["review"].tolist() == ["", "atypical", ""]
    assert gallery.currentItem().data(Qt.ItemDataRole.UserRole) == 1  # stays on the last one
    qtbot.keyClick(gallery, Qt.Key.Key_Backspace)
    assert widget.review.decisions.tolist() == ["", "", ""]
    # Sorting by p_atypical: the likeliest atypical first, the gallery follows.
    widget.order.value = "p_atypical"
    assert [gallery.item(r).data(Qt.ItemDataRole.UserRole) for r in range(3)] == [1, 2, 0]
    # Filtering by p_atypical and by score: the layer, the gallery and the keys follow.
    widget.min_p_atypical.value = 0.25
    assert widget.layer.shown.tolist() == [False, True, True] and gallery.count() == 2
    widget.min_score.value = 0.6
    assert widget.layer.shown.tolist() == [False, False, True] and gallery.count() == 1
    assert widget.sequence.tolist() == [2]
    widget.min_score.value = widget.min_p_atypical.value = 0.0
    assert gallery.count() == 3
    widget.more.value = True
    assert not widget.settings.native.isHidden()


def test_the_gallery_reads_only_what_is_in_view(qtbot) -> None:
    """5,000 candidates: opening the gallery reads a few dozen thumbnails, never a level."""
    from napari_mitosis._napari.review_gallery import READ_AHEAD, CandidateGallery

    reads: list[tuple] = []

    class Level:
        shape, ndim, dtype = (100_000, 100_000, 3), 3, np.uint8

        def __getitem__(self, key):  # type: ignore[no-untyped-def]
            reads.append(key)
            return np.zeros((key[0].stop - key[0].start, key[1].stop - key[1].start, 3), np.uint8)

    rng = np.random.default_rng(0)
    review = Review(rng.uniform(0, 100_000, (5000, 2)), rng.uniform(0, 1, 5000))
    gallery = CandidateGallery(lambda i: None, lambda k: False)
    qtbot.addWidget(gallery)
    gallery.resize(400, 300)
    gallery.show()
    order = review.order("score")
    gallery.show_review(review, order, Level(), (0.25, 0.25))
    assert gallery.count() == 5000 and 0 < len(reads) <= READ_AHEAD
    assert all(k[0].stop - k[0].start <= 96 for k in reads)
    gallery.set_current(int(order[-1]))  # the last candidate: scrolled into view and read
    assert int(order[-1]) in gallery.pixels and len(reads) <= 2 * READ_AHEAD
