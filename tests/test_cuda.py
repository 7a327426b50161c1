"""On a CUDA GPU, models train to the same quality bar as on the CPU, and a model gives the
same answers on both (the GPU runs under float16 autocast, so "same" is within AMP
tolerance). Skipped where PyTorch sees no GPU — CI has none; run on a GPU box with
``pytest -o filterwarnings= tests/test_cuda.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torchvision.ops import box_iou

from conftest import patches_of
from napari_mitosis.classification.run import ClassifierPredictor, classify_slide
from napari_mitosis.classification.training import ClassifierTraining, train_classifier
from napari_mitosis.detection.run import detect_array
from napari_mitosis.detection.training import DetectorTraining, train_detector
from napari_mitosis.engine.tiled_inference import TilePredictor
from napari_mitosis.io.detections import mask_to_boxes
from napari_mitosis.models.checkpoint import ModelCard, build_model, load_checkpoint
from napari_mitosis.models.detector import DetectionPredictor
from napari_mitosis.samples.synthetic import synthetic_fields
from napari_mitosis.segmentation.run import segment_array
from napari_mitosis.segmentation.training import UNetTraining, train_unet

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")

AMP = 2e-2  # float16 autocast vs float32, on probabilities in [0, 1]


def test_classifier_trained_on_the_gpu_scores_alike_on_both_devices(
    tumour_slides, tmp_path: Path
) -> None:
    train = patches_of(tumour_slides[0][0], 120, 0)
    validation = patches_of(tumour_slides[1][0], 50, 1)
    config = ClassifierTraining(
        input_size=64, width=16, epochs=4, mpp=1.0, patience=2, device="cuda", notes="GPU test"
    )
    path = tmp_path / "tumour.safetensors"
    train_classifier(train, validation, path, config)
    model, card = load_checkpoint(path, task="classification")
    images, labels = patches_of(tumour_slides[2][0], 60, 2)
    gpu = ClassifierPredictor(model, card, "cuda")(images)
    cpu = ClassifierPredictor(model, card, "cpu")(images)
    assert roc_auc_score(labels, gpu) > 0.9
    assert np.abs(gpu - cpu).max() < AMP

    slide = tumour_slides[2][0]
    on_gpu = classify_slide(slide, path, device="cuda", stride=32, batch_size=64)
    on_cpu = classify_slide(slide, path, device="cpu", stride=32, batch_size=64)
    np.testing.assert_array_equal(on_gpu.visited, on_cpu.visited)
    assert np.abs(np.asarray(on_gpu.heatmap) - np.asarray(on_cpu.heatmap)).max() < AMP
    assert (on_gpu.mask == on_cpu.mask).mean() > 0.99


@pytest.mark.parametrize(("architecture", "size"), [("inception_v3", 299), ("wide_resnet", 224)])
def test_torchvision_classifiers_agree_across_devices(architecture: str, size: int) -> None:
    torch.manual_seed(0)
    card = ModelCard(
        architecture, {"outputs": 1}, task="classification", input_size=size, mpp=0.5,
        classes=("normal", "tumour"),
    )  # fmt: skip
    model = build_model(card)
    tiles = np.random.default_rng(0).integers(0, 255, (8, size, size, 3), np.uint8)
    # As training would leave it: batch-norm statistics of such input, logits of s.d. 1.
    # (Untrained, its logits reach 1e11: 1.0 on the CPU, overflow in float16.)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(card.mean).view(1, 3, 1, 1)) / torch.tensor(card.std).view(1, 3, 1, 1)
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.momentum = None  # running statistics = this batch's
    with torch.no_grad():
        model.train()(x)
        logits = model.eval()(x)
        model.fc.weight.div_(logits.std())
        model.fc.bias.sub_(logits.mean()).div_(logits.std())
    cpu = ClassifierPredictor(model, card, "cpu")(tiles)
    assert cpu.min() > 0.01 and cpu.max() < 0.99  # not saturated: the comparison means something
    float32 = ClassifierPredictor(model, card, "cuda", amp=False)(tiles)
    assert np.abs(float32 - cpu).max() < 1e-4
    # Under autocast an untrained deep model drifts further than AMP (its logits are a small
    # difference of large activations), but it never answers NaN.
    assert np.isfinite(ClassifierPredictor(model, card, "cuda")(tiles)).all()


def test_unet_trained_on_the_gpu_segments_alike_on_both_devices(field_pairs, tmp_path) -> None:
    train = [(rgb, t.mitosis_mask) for rgb, t in field_pairs[:4]]
    val = [(rgb, t.mitosis_mask) for rgb, t in field_pairs[4:6]]
    config = UNetTraining.small(batch_size=8, patience=3, seed=0, device="cuda", notes="GPU")
    path = tmp_path / "unet.safetensors"
    report = train_unet(train, val, path, config)
    assert report.best_dice > 0.7
    model, card = load_checkpoint(path)
    rgb, truth = field_pairs[6]
    results = {
        device: segment_array(
            rgb, TilePredictor(model, card, device), tile=128, overlap=32, min_area=20
        )
        for device in ("cuda", "cpu")
    }
    gpu, cpu = results["cuda"], results["cpu"]
    assert np.abs(gpu.probability - cpu.probability).max() < AMP
    assert len(gpu.detections) == len(cpu.detections) == len(truth.mitoses)
    both = (gpu.labels > 0) & (cpu.labels > 0)
    either = (gpu.labels > 0) | (cpu.labels > 0)
    assert both.sum() / either.sum() > 0.98


def test_detector_trained_on_the_gpu_finds_the_same_boxes_on_both_devices(
    field_pairs, tmp_path
) -> None:
    train = [(rgb, mask_to_boxes(t.mitosis_mask).boxes) for rgb, t in field_pairs[:4]]
    validation = [(rgb, t.mitoses) for rgb, t in field_pairs[4:6]]
    config = DetectorTraining(
        crop=128, batch_size=4, max_steps=300, eval_every=50, patience=3, seed=0,
        device="cuda", notes="GPU test",
    )  # fmt: skip
    path = tmp_path / "detector.safetensors"
    report = train_detector(train, validation, path, config)
    assert report.best_f1 > 0.7
    model, card = load_checkpoint(path, task="detection")
    for rgb, _ in synthetic_fields(2, first_seed=50):
        found = {
            device: detect_array(rgb, DetectionPredictor(model, card, device), overlap=32)
            for device in ("cuda", "cpu")
        }
        gpu, cpu = found["cuda"], found["cpu"]
        assert len(gpu) == len(cpu)
        if len(cpu):
            iou = box_iou(torch.as_tensor(gpu.boxes), torch.as_tensor(cpu.boxes))
            assert (iou.max(1).values > 0.9).all()
            nearest = iou.argmax(1).numpy()
            assert np.abs(gpu.scores - cpu.scores[nearest]).max() < AMP
