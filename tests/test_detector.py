"""Given a detector and a tiled slide, every mitosis is reported once in level-0 pixels,
however the tiles cut it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.measure import label, regionprops

from napari_mitosis.engine.mergers import TileBoxMerger
from napari_mitosis.engine.tiled_inference import run_tiled
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.models.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from napari_mitosis.models.detector import DetectionPredictor, faster_rcnn


def dark_blob_detector(tiles: np.ndarray) -> list[dict[str, np.ndarray]]:
    """A stand-in detector with a known answer: one box per dark blob the tile shows."""
    outputs = []
    for tile in tiles:
        regions = regionprops(label(tile[..., 0] < 100))
        boxes = [(r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]) for r in regions]
        outputs.append(
            {
                "boxes": np.array(boxes, float).reshape(-1, 4),
                "scores": np.full(len(boxes), 0.9),
                "labels": np.ones(len(boxes), int),
            }
        )
    return outputs


@pytest.mark.parametrize("centre", [(128, 128), (100, 128), (128, 96), (300, 200)])
def test_an_object_on_a_tile_border_is_reported_once_and_whole(centre: tuple[int, int]) -> None:
    image = np.full((400, 400, 3), 230, np.uint8)
    cy, cx = centre
    image[cy - 10 : cy + 10, cx - 12 : cx + 12] = 40  # a 24 × 20 px dark object
    grid = TileGrid.over(image.shape, 128, 32, downsample=2.0)  # tiles every 96 px
    merger = TileBoxMerger(grid, overlap=32)
    run_tiled(grid, image, dark_blob_detector, merger, batch_size=3)
    found = merger.finish(mpp=(0.5, 0.5))
    assert len(found) == 1
    # Level-0 pixels: level pixels × downsample 2.
    np.testing.assert_allclose(found.boxes[0], np.array([cx - 12, cy - 10, cx + 12, cy + 10]) * 2.0)
    assert found.classes == ["Mitosis candidate"] and found.mpp == (0.5, 0.5)


def test_duplicates_on_a_seam_are_removed_by_nms() -> None:
    grid = TileGrid.over((256, 256), 128, 0)
    merger = TileBoxMerger(grid, overlap=0)
    box = {
        "boxes": np.array([[10.0, 10, 40, 40]]),
        "scores": np.array([0.8]),
        "labels": np.array([1]),
    }
    near = {
        "boxes": np.array([[12.0, 11, 41, 40]]),
        "scores": np.array([0.7]),
        "labels": np.array([1]),
    }
    merger.add(np.array([[0, 0], [0, 0]]), [box, near])
    found = merger.finish()
    assert len(found) == 1 and found.scores[0] == 0.8


@pytest.mark.parametrize("backbone", ["mobilenet_v3", "resnet50_v2"])
def test_faster_rcnn_is_built_without_weights_for_small_objects(backbone: str) -> None:
    model = faster_rcnn(backbone=backbone, tile=256)
    sizes = model.rpn.anchor_generator.sizes
    assert min(min(s) for s in sizes) == 16  # COCO's smallest anchor is 32
    assert model.transform.min_size == (256,) and model.transform.max_size == 256  # no resize
    model.eval()
    with torch.inference_mode():
        (out,) = model([torch.rand(3, 256, 256)])
    assert set(out) == {"boxes", "scores", "labels"}


def test_detector_checkpoint_round_trip_and_prediction_format(tmp_path) -> None:
    card = ModelCard(
        "faster_rcnn",
        {"backbone": "mobilenet_v3", "tile": 128},
        task="detection",
        input_size=128,
        classes=("background", "mitosis"),
    )
    path = save_checkpoint(
        tmp_path / "det.safetensors", faster_rcnn(backbone="mobilenet_v3", tile=128), card
    )
    model, back = load_checkpoint(path, task="detection")
    assert back.task == "detection"
    (prediction,) = DetectionPredictor(model, back, "cpu")(np.zeros((1, 128, 128, 3), np.uint8))
    assert prediction["boxes"].shape[1:] == (4,) and len(prediction["scores"]) == len(
        prediction["labels"]
    )
    with pytest.raises(ValueError, match="is a detection model, not a segmentation model"):
        load_checkpoint(path, task="segmentation")


def test_crops_and_boxes_are_transformed_together() -> None:
    from napari_mitosis.detection.training import BoxCropSampler, DetectorTraining
    from napari_mitosis.io.detections import boxes_from_labels
    from napari_mitosis.samples.synthetic import synthetic_slide

    rgb, truth = synthetic_slide(384, 384, field=True, n_mitoses=3, seed=2)
    boxes = boxes_from_labels(label(truth.mitosis_mask)).boxes
    config = DetectorTraining(
        crop=128,
        batch_size=16,
        positive_fraction=1.0,
        brightness=0,
        contrast=0,
        saturation=0,
        hue=0,
    )  # geometry only
    images, targets = BoxCropSampler([(rgb, boxes)], config, np.random.default_rng(0)).batch()
    assert sum(len(t["boxes"]) for t in targets) >= 16  # every crop was centred on a figure
    for image, target in zip(images, targets, strict=True):
        assert image.shape == (3, 128, 128) and image.min() >= 0 and image.max() <= 1
        grey = image.mean(0).numpy() * 255
        for x0, y0, x1, y1 in target["boxes"].numpy().round().astype(int):
            # Rotated/flipped with the image, each box still frames dark chromatin.
            assert grey[y0:y1, x0:x1].min() < 80
        assert (target["labels"] == 1).all()


class KnownAnswerPredictor:
    """The dark-blob stand-in with a model card, as the detection run expects."""

    def __init__(self, tile: int) -> None:
        self.card = ModelCard("faster_rcnn", {}, task="detection", input_size=tile, threshold=0.5)

    def __call__(self, tiles: np.ndarray) -> list[dict[str, np.ndarray]]:
        outputs = []
        for tile in tiles:
            regions = [r for r in regionprops(label(tile.mean(axis=-1) < 70)) if r.area >= 20]
            boxes = [(r.bbox[1], r.bbox[0], r.bbox[3], r.bbox[2]) for r in regions]
            outputs.append(
                {
                    "boxes": np.array(boxes, float).reshape(-1, 4),
                    "scores": np.full(len(boxes), 0.9),
                    "labels": np.ones(len(boxes), int),
                }
            )
        return outputs


def test_detection_over_a_slide_level_reports_each_mitosis_once_in_level0_pixels(tmp_path) -> None:
    from napari_mitosis.detection.matching import match_detections, max_distance_px
    from napari_mitosis.detection.run import DetectionRun, mitotic_density
    from napari_mitosis.engine.tissue import tissue_mask
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    truth = write_synthetic_slide(tmp_path / "s.tif", 1024, 1536, n_mitoses=6, seed=4)
    slide = open_slide(tmp_path / "s.tif")
    run = DetectionRun(
        slide.sources[1],
        KnownAnswerPredictor(128),
        overlap=32,
        level=1,
        downsample=2.0,
        level_mpp=slide.level_mpp(1),
    )
    kept = run.restrict_to_tissue(tissue_mask(slide.sources, level0_mpp=0.25), 0.05)
    assert kept < len(run.grid)
    progress = list(run.steps())
    assert progress[-1] == (kept, kept)
    found = run.result()
    assert found.mpp == (0.25, 0.25)
    result = match_detections(
        found.centres, truth.mitoses, max_distance=max_distance_px(0.25), scores=found.scores
    )
    assert (result.tp, result.fn) == (6, 0)
    density = mitotic_density(result.tp, area_mm2=0.5)
    assert density["per_mm2"] == 12 and density["per_10_hpf"] == pytest.approx(12 * 2.37)


def test_detection_refuses_greyscale_images() -> None:
    from napari_mitosis.detection.run import DetectionRun

    with pytest.raises(ValueError, match="needs an RGB image"):
        DetectionRun(np.zeros((64, 64), np.uint8), KnownAnswerPredictor(64))
