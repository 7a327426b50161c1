"""Given folders of crops centred on mitotic figures, the detector trains without being
able to learn the position, and is scored by the 8 µm rule on the figure at each centre."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from napari_mitosis.cli import main
from napari_mitosis.detection.centred_crops import padded_field, read_centred_crops
from napari_mitosis.detection.matching import match_detections, max_distance_px
from napari_mitosis.detection.run import detect_array
from napari_mitosis.detection.training import BoxCropSampler, DetectorTraining
from napari_mitosis.models.checkpoint import load_checkpoint
from napari_mitosis.models.detector import DetectionPredictor
from napari_mitosis.samples.synthetic import synthetic_fields


def _crops_around_mitoses(fields, size: int = 128, shift: int = 0) -> list[np.ndarray]:
    crops = []
    for rgb, truth in fields:
        for y, x in truth.mitoses.astype(int):
            y0, x0 = y - size // 2 - shift, x - size // 2 - shift
            if y0 >= 0 and x0 >= 0 and y0 + size <= rgb.shape[0] and x0 + size <= rgb.shape[1]:
                crops.append(rgb[y0 : y0 + size, x0 : x0 + size])
    return crops


def _write_folder(root: Path, crops: list[np.ndarray]) -> Path:
    rows = ["file,slide"]
    for i, crop in enumerate(crops):
        label = "atypical" if i % 3 == 0 else "normal"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(root / label / f"c{i}.png")
        rows.append(f"{label}/c{i}.png,slide{i % 4}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def test_every_crop_gets_one_box_at_its_centre_and_splits_keep_slides_whole(tmp_path) -> None:
    crops = _crops_around_mitoses(synthetic_fields(2, first_seed=70))
    folder = read_centred_crops(_write_folder(tmp_path / "crops", crops))
    assert len(folder.images) == len(crops) and folder.images.shape[1:] == (128, 128, 3)
    boxes = folder.boxes(mpp=0.25, box_um=12.0)
    np.testing.assert_allclose(boxes[0], [[40, 40, 88, 88]])  # 12 µm = 48 px around (64, 64)
    np.testing.assert_allclose(folder.centres()[0], [[64, 64]])
    rest, held = folder.split(0.25, seed=0)
    assert len(held) and not set(folder.groups[rest]) & set(folder.groups[held])


def test_training_crops_move_the_figure_so_its_position_cannot_be_learnt() -> None:
    rgb = np.full((128, 128, 3), 200, np.uint8)
    box = np.array([[40.0, 40, 88, 88]])
    config = DetectorTraining(crop=128, batch_size=1, positive_fraction=1.0, hed_jitter=0)
    sampler = BoxCropSampler([padded_field(rgb, box)], config, np.random.default_rng(0))
    centres = []
    for _ in range(300):
        _, target = sampler._crop()
        (x0, y0, x1, y1) = target["boxes"][0].tolist()
        assert 0 <= x0 < x1 <= 128 and 0 <= y0 < y1 <= 128  # the figure stays whole
        centres.append(((x0 + x1) / 2, (y0 + y1) / 2))
    spread = np.ptp(np.asarray(centres), axis=0)
    assert (spread >= 60).all(), spread  # anywhere within ±30 px of the middle, both ways


def test_centred_crops_are_scored_by_the_8_um_rule_and_a_shifted_figure_is_found(
    trained_detector, tmp_path: Path, capsys
) -> None:
    path, _ = trained_detector
    fields = synthetic_fields(4, first_seed=50)  # never seen in training
    folder = _write_folder(tmp_path / "test", _crops_around_mitoses(fields))
    command = ["evaluate-detector", str(folder), "--centred-crops", "--model", str(path)]
    assert main([*command, "--out", str(tmp_path / "ev"), "--device", "cpu", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    n = len(list(folder.rglob("*.png")))
    assert scores["n"] == n and scores["tp"] + scores["fn"] == n  # one figure a crop
    assert scores["recall"] >= 0.6 and scores["false_positives_per_image"] <= 1.0
    # The same figures 30 px off the centre are found where they are.
    model, card = load_checkpoint(path, task="detection")
    predictor = DetectionPredictor(model, card, "cpu")
    shifted = _crops_around_mitoses(fields, shift=30)
    found = 0
    for crop in shifted:
        hits = detect_array(crop, predictor, overlap=32, mpp=(0.25, 0.25))
        truth = np.array([[64.0 + 30, 64.0 + 30]])
        found += match_detections(hits.centres, truth, max_distance=max_distance_px(0.25)).tp
    assert found >= 0.6 * len(shifted), (found, len(shifted))
