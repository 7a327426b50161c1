"""Given fields with mitoses, when I train and run the U-Net, I get the mitoses back:
as probability, labels and boxes, tile by tile with no seams, on images and slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_mitosis.engine.mergers import lazy_probability
from napari_mitosis.engine.tiled_inference import Cancelled, TilePredictor
from napari_mitosis.io.errors import OutputExistsError
from napari_mitosis.models.checkpoint import ModelCard, load_checkpoint, read_card, save_checkpoint
from napari_mitosis.models.unet import unet
from napari_mitosis.segmentation.run import (
    pseudo_masks,
    segment_array,
    segment_slide,
    write_segmentation,
)
from napari_mitosis.segmentation.training import UNetTraining, dice_score, train_unet


def test_default_unet_is_about_8m_parameters_and_keeps_the_size() -> None:
    model = unet()
    assert 7e6 < sum(p.numel() for p in model.parameters()) < 9e6
    small = unet(base_width=4, depth=2).eval()
    assert small(torch.zeros(1, 3, 32, 48)).shape == (1, 1, 32, 48)
    with pytest.raises(ValueError, match="divisible by 4"):
        small(torch.zeros(1, 3, 30, 32))


def test_checkpoints_round_trip_safely_with_their_card(tmp_path: Path) -> None:
    model = unet(base_width=4, depth=2)
    card = ModelCard("unet", {"base_width": 4, "depth": 2}, input_size=64, mpp=0.25, threshold=0.4)
    path = save_checkpoint(tmp_path / "m.safetensors", model, card)
    loaded, back = load_checkpoint(path)
    assert back == card
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    with pytest.raises(OutputExistsError):
        save_checkpoint(path, model, card)


def test_bad_checkpoints_get_clear_errors(tmp_path: Path) -> None:
    garbage = tmp_path / "pickle.pt"
    garbage.write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(ValueError, match=r"pickle\.pt: not a readable safetensors checkpoint"):
        load_checkpoint(garbage)
    lying = save_checkpoint(
        tmp_path / "lying.safetensors",
        unet(base_width=4, depth=2),
        ModelCard("unet", {"base_width": 4, "depth": 3}),
    )
    with pytest.raises(ValueError, match="weights do not fit its unet card"):
        load_checkpoint(lying)
    with pytest.raises(ValueError, match="is a segmentation model, not a detection model"):
        load_checkpoint(lying, task="detection")


def test_tiled_result_equals_whole_image_result_away_from_the_border() -> None:
    torch.manual_seed(0)
    model = unet(base_width=8, depth=2)
    card = ModelCard("unet", {"base_width": 8, "depth": 2}, input_size=128)
    predictor = TilePredictor(model, card, "cpu")
    image = np.random.default_rng(0).integers(0, 255, (300, 420, 3), np.uint8)
    tiled = segment_array(image, predictor, tile=128, overlap=48).probability
    whole = predictor(np.pad(image, ((0, 4), (0, 12), (0, 0)))[None])[0, 0][:300, :420]
    assert np.abs(tiled - whole)[16:-16, 16:-16].max() < 2e-3
    # Into a lazily allocated zarr array, only for a region: the same numbers there.
    out = lazy_probability((120, 200), chunk=64)
    part = segment_array(
        image, predictor, tile=128, overlap=48, region=(100, 150, 220, 350), out=out
    )
    assert isinstance(part.probability, zarr.Array)
    assert np.abs(part.probability[:] - whole[100:220, 150:350])[16:-16, 16:-16].max() < 2e-3


def test_a_cancelled_segmentation_stops_between_batches() -> None:
    card = ModelCard("unet", {"base_width": 4, "depth": 2}, input_size=64)
    predictor = TilePredictor(unet(base_width=4, depth=2), card, "cpu")
    seen = []
    with pytest.raises(Cancelled):
        segment_array(
            np.zeros((256, 256, 3), np.uint8),
            predictor,
            tile=64,
            overlap=0,
            batch_size=2,
            progress=lambda d, t: seen.append(d),
            should_stop=lambda: len(seen) >= 2,
        )
    assert seen == [2, 4]


def test_greyscale_input_to_an_rgb_model_is_refused() -> None:
    card = ModelCard("unet", {"base_width": 4, "depth": 2}, input_size=64)
    predictor = TilePredictor(unet(base_width=4, depth=2), card, "cpu")
    with pytest.raises(ValueError, match="expects 3-channel images; this is a greyscale image"):
        segment_array(np.zeros((64, 64), np.uint8), predictor)


def test_training_reaches_validation_dice_above_0_7(trained_unet) -> None:
    path, report = trained_unet
    assert report.best_dice > 0.7
    assert path.exists() and path.with_suffix(".csv").exists()
    log = path.with_suffix(".csv").read_text().splitlines()
    assert log[0] == "step,train_loss,val_dice,seconds" and len(log) >= 2
    card = read_card(path)
    assert (
        card.notes == "test model, synthetic data" and card.metrics["val_dice"] == report.best_dice
    )
    assert card.mpp == 0.25


def test_trained_unet_finds_held_out_mitoses_but_not_look_alikes(trained_unet, field_pairs) -> None:
    path, _ = trained_unet
    model, card = load_checkpoint(path)
    rgb, truth = field_pairs[6]  # never seen in training or validation
    result = segment_array(
        rgb, TilePredictor(model, card, "cpu"), tile=128, overlap=32, min_area=20
    )
    assert dice_score(truth.mitosis_mask, result.labels > 0) > 0.7
    centres = result.detections.centres
    for y, x in truth.mitoses:
        assert np.hypot(*(centres - (y, x)).T).min() < 12  # every mitosis found …
    for y, x in truth.distractors:
        assert result.labels[int(y), int(x)] == 0  # … and no look-alike taken for one
    assert len(result.detections) == len(truth.mitoses)


def test_segment_slide_reports_boxes_in_level0_pixels(trained_unet, tmp_path: Path) -> None:
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    truth = write_synthetic_slide(tmp_path / "slide.tif", 1024, 1536, n_mitoses=4, seed=8)
    path, _ = trained_unet
    result = segment_slide(
        tmp_path / "slide.tif",
        path,
        region=(256, 256, 800, 1200),
        tile=128,
        overlap=32,
        min_area=20,
        device="cpu",
    )
    assert result.level == 0 and result.level_mpp == (0.25, 0.25)
    inside = [(y, x) for y, x in truth.mitoses if 256 <= y < 800 and 256 <= x < 1200]
    assert inside
    centres = result.detections.centres
    for y, x in inside:
        assert np.hypot(*(centres - (y, x)).T).min() < 12
    written = write_segmentation(result, tmp_path / "out", "slide")
    assert [p.name for p in written] == [
        "slide.labels.tif",
        "slide.boxes.csv",
        "slide.boxes.geojson",
        "slide.rle.json",
    ]
    with pytest.raises(OutputExistsError):
        write_segmentation(result, tmp_path / "out", "slide")


def test_pseudo_masks_grow_centroids_into_figures(trained_unet, field_pairs) -> None:
    path, _ = trained_unet
    model, card = load_checkpoint(path)
    rgb, truth = field_pairs[6]
    decoy = truth.distractors[:1]  # a "centroid" on a look-alike nucleus: no mitosis there
    centroids = np.concatenate([truth.mitoses, decoy])
    labels, boxes, fell_back = pseudo_masks(
        rgb,
        centroids,
        TilePredictor(model, card, "cpu"),
        mpp=0.25,
        window=96,
        fallback_radius_um=3.0,
    )
    assert list(fell_back) == [False] * len(truth.mitoses) + [True]
    for i, (y, x) in enumerate(centroids, start=1):
        assert labels[int(y), int(x)] == i
    overlap = (labels > 0) & (labels <= len(truth.mitoses))
    assert dice_score(truth.mitosis_mask, overlap) > 0.7
    assert len(boxes) == len(centroids)
    fallback_area = (labels == len(centroids)).sum()
    assert abs(fallback_area - np.pi * (3.0 / 0.25) ** 2) < 0.15 * fallback_area


def test_training_refuses_to_overwrite_and_checks_pairs(tmp_path: Path, field_pairs) -> None:
    rgb, truth = field_pairs[0]
    existing = tmp_path / "m.safetensors"
    existing.write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        train_unet(
            [(rgb, truth.mitosis_mask)],
            [(rgb, truth.mitosis_mask)],
            existing,
            UNetTraining(max_steps=1),
        )
    assert existing.read_bytes() == b"keep"
    with pytest.raises(ValueError, match="does not match image"):
        train_unet(
            [(rgb, truth.mitosis_mask[:10])],
            [(rgb, truth.mitosis_mask)],
            tmp_path / "n.safetensors",
        )


def test_rgba_input_to_an_rgb_model_is_refused() -> None:
    card = ModelCard("unet", {"base_width": 4, "depth": 2}, input_size=64)
    predictor = TilePredictor(unet(base_width=4, depth=2), card, "cpu")
    with pytest.raises(ValueError, match="this is an RGBA image"):
        segment_array(np.zeros((64, 64, 4), np.uint8), predictor)
