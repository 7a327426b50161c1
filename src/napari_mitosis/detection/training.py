"""Train a Faster R-CNN mitosis detector; keep the best checkpoint by validation F1.

Crops are sampled half around a mitosis, half anywhere (valid negatives included) or, in
fields from a review, on the look-alikes the reviewer rejected (hard negatives); images
and boxes are transformed together by torchvision transforms v2 (orthogonal rotations,
flips, colour jitter). Validation runs the same tiled engine as inference and scores with
the challenges' centroid rule, so the kept F1 is the F1 users will see.

With negative tissue (`negative_tissue.NegativeField`: real tissue holding no figure),
a share of the crops comes from it, centred on its nuclei or on the candidates the model
still marks there (mined at every evaluation), and held-out negative tissue joins the
validation: its false candidates lower the F1 that picks the checkpoint and threshold.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from napari_mitosis.detection.matching import (
    f1_optimal_threshold,
    pool_fields,
    threshold_with_margin,
)
from napari_mitosis.detection.negative_tissue import NegativeField
from napari_mitosis.detection.run import detect_array
from napari_mitosis.engine.tiling import crop_origin
from napari_mitosis.engine.training_log import EarlyStopping, write_history
from napari_mitosis.io.output_file import refuse_existing
from napari_mitosis.models.checkpoint import (
    ModelCard,
    load_checkpoint,
    save_checkpoint,
    training_record,
)
from napari_mitosis.models.detector import DetectionPredictor, faster_rcnn, load_backbone_weights
from napari_mitosis.models.inference_model import pick_device
from napari_mitosis.models.stain import StainTraining, card_normaliser

#: (image (h, w, 3) uint8, boxes (n, 4) xyxy px[, hard negatives (m, 2) (y, x) px])
BoxedField = tuple[np.ndarray, ...]


@dataclass
class DetectorTraining(StainTraining):
    backbone: str = "mobilenet_v3"
    crop: int = 256
    batch_size: int = 4
    max_steps: int = 2000
    eval_every: int = 100
    patience: int = 5
    # From scratch (no pretrained backbone), 1e-3 diverges on synthetic fields; 2e-4 reaches
    # validation F1 ≈0.83 by step 150.
    learning_rate: float = 2e-4
    positive_fraction: float = 0.5
    #: Of the other crops, those centred on a reviewed look-alike where a field has some.
    hard_negative_fraction: float = 0.5
    distance_um: float = 8.0
    mpp: float = 0.25
    brightness: float = 64 / 255
    contrast: float = 0.75
    saturation: float = 0.25
    hue: float = 0.04
    seed: int = 0
    device: str = "auto"
    notes: str = ""
    #: With negative tissue: the share of crops cut from it, the share of those centred on
    #: mined candidates (the rest on its nuclei), and the score at which a candidate there
    #: is mined.
    negative_fraction: float = 0.3
    mined_fraction: float = 0.5
    mine_threshold: float = 0.2
    #: The tissue each validation figure stands for (mm²) when held-out negative tissue
    #: is scored: its false candidates count as if it covered that much, so the F1 that
    #: picks the checkpoint and threshold is the F1 of whole fields, not of crops. One HPF
    #: (0.237 mm²) a figure: about the density of the MIDOG 2021 training cases.
    negative_mm2_per_figure: float = 0.237
    init: str | Path | None = None  # a detector checkpoint to fine-tune (same classes)
    backbone_weights: str | Path | None = None  # classification weights for the backbone


@dataclass
class DetectorReport:
    card: ModelCard
    best_step: int
    best_f1: float
    history: list[dict[str, float]] = field(default_factory=list)


class BoxCropSampler:
    """Random crops with their boxes, augmented together."""

    def __init__(
        self,
        fields: Sequence[BoxedField],
        config: DetectorTraining,
        rng: np.random.Generator,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
        negatives: Sequence[NegativeField] = (),
    ) -> None:
        self.fields = fields
        self.negatives = negatives
        self.normalise = normalise  # the card's stain normalisation, as prediction does
        self.stain_rng = config.stain_rng(config.seed)
        self.config = config
        self.rng = rng
        self.augment = v2.Compose(
            [
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                v2.RandomChoice([v2.RandomRotation((angle, angle)) for angle in (0, 90, 180, 270)]),
                v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue),
                v2.SanitizeBoundingBoxes(min_size=2),
            ]
        )

    def _choose(self) -> tuple[np.ndarray, np.ndarray, tuple[float, float] | None]:
        """A field, its boxes and where to centre the crop (None: anywhere)."""
        if self.negatives and self.rng.random() < self.config.negative_fraction:
            tissue = self.negatives[int(self.rng.integers(len(self.negatives)))]
            points = tissue.nuclei
            if len(tissue.mined) and self.rng.random() < self.config.mined_fraction:
                points = tissue.mined
            centre = None
            if len(points):
                y0, x0 = points[self.rng.integers(len(points))]
                centre = (float(y0), float(x0))
            return tissue.image, np.zeros((0, 4)), centre
        image, boxes, *rest = self.fields[int(self.rng.integers(len(self.fields)))]
        negatives = rest[0] if rest else np.zeros((0, 2))
        centre = None
        if len(boxes) and self.rng.random() < self.config.positive_fraction:
            x0, y0, x1, y1 = boxes[self.rng.integers(len(boxes))]
            centre = ((y0 + y1) / 2, (x0 + x1) / 2)
        elif len(negatives) and self.rng.random() < self.config.hard_negative_fraction:
            y0, x0 = negatives[self.rng.integers(len(negatives))]  # a look-alike: no box
            centre = (float(y0), float(x0))
        return image, boxes, centre

    def _crop(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config.crop
        image, boxes, centre = self._choose()
        y, x = crop_origin(self.rng, image.shape, c, centre)
        pixels = self.config.jitter(
            np.ascontiguousarray(image[y : y + c, x : x + c]), self.stain_rng
        )
        if self.normalise is not None:
            pixels = self.normalise(pixels[None])[0]
        crop = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
        shifted = np.asarray(boxes, float).reshape(-1, 4) - [x, y, x, y]
        clipped = np.clip(shifted, 0, c)
        area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
        visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
        keep = visible >= 0.5 * np.maximum(area, 1e-9)  # half a figure still counts
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(clipped[keep], dtype=torch.float32), format="XYXY", canvas_size=(c, c)
            ),
            "labels": torch.ones(int(keep.sum()), dtype=torch.int64),
        }
        image_t, target = self.augment(tv_tensors.Image(crop), target)
        return image_t.float() / 255.0, {
            "boxes": target["boxes"].as_subclass(torch.Tensor),
            "labels": target["labels"],
        }

    def batch(self) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        crops = [self._crop() for _ in range(self.config.batch_size)]
        return [c[0] for c in crops], [c[1] for c in crops]


def _initial_model(config: DetectorTraining) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A new detector, or the ``init`` checkpoint when it detects the same single class."""
    if config.init is None:
        options: dict[str, Any] = {"backbone": config.backbone, "tile": config.crop}
        model = faster_rcnn(**options)
        if config.backbone_weights is not None:
            load_backbone_weights(model, config.backbone_weights)
        return model, options
    model, card = load_checkpoint(config.init, task="detection")
    if len(card.classes) != 2:
        raise ValueError(
            f"{config.init}: detects {len(card.classes) - 1} classes {list(card.classes[1:])}; "
            "this training has one (mitosis)"
        )
    options = {**card.options, "tile": config.crop}
    model.transform.min_size, model.transform.max_size = (config.crop,), config.crop
    return model, options


def train_detector(
    train: Sequence[BoxedField],
    validation: Sequence[tuple[np.ndarray, np.ndarray]],  # (image, true centres (y, x))
    out: str | Path,
    config: DetectorTraining | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    negatives: Sequence[NegativeField] = (),
    negative_validation: Sequence[NegativeField] = (),
) -> DetectorReport:
    """Train; every ``eval_every`` steps detect on the validation fields and keep the best F1.

    ``negatives``: tissue with no figure to cut crops from (mined at every evaluation);
    ``negative_validation``: more of it, scored with the validation fields."""
    config = config or DetectorTraining()
    out = Path(out)
    log_path = out.with_suffix(".csv")
    refuse_existing((out, log_path), overwrite=overwrite)
    if not train or not validation:
        raise ValueError("need training and validation fields")
    for i, (image, *_) in enumerate(train):  # (image, boxes[, hard negatives])
        if min(image.shape[:2]) < config.crop:
            raise ValueError(
                f"training field {i} ({image.shape[:2]}) is smaller than the {config.crop} px crop"
            )
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device(config.device)
    model, options = _initial_model(config)
    model = model.to(device)
    card = ModelCard(
        "faster_rcnn",
        options,
        task="detection",
        input_size=config.crop,
        mpp=config.mpp,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        notes=config.notes,
        stain=config.stain_record(),
        training=training_record(config),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    # Linear warm-up then cosine decay (as torchvision's detection references warm up):
    # from scratch, a constant rate let the loss climb again after ~150 steps.
    warmup = max(1, min(100, config.max_steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda i: (
            min(1.0, (i + 1) / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(i, config.max_steps) / config.max_steps))
        ),
    )
    sampler = BoxCropSampler(train, config, rng, card_normaliser(card), negatives)
    history: list[dict[str, float]] = []
    stopping, losses = EarlyStopping(config.patience), []
    started = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        model.train()
        images, targets = sampler.batch()
        loss_dict = model(
            [i.to(device) for i in images],
            [{k: v.to(device) for k, v in t.items()} for t in targets],
        )
        loss = sum(loss_dict.values())
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if step % config.eval_every and step != config.max_steps:
            continue
        predictor = DetectionPredictor(model, card, device)
        found = [
            detect_array(image, predictor, overlap=config.crop // 4, score_threshold=0.0)
            for image, _ in validation
        ]
        scored = [
            (f.centres, f.scores, truth, config.mpp)
            for f, (_, truth) in zip(found, validation, strict=True)
        ]
        on_tissue = [
            tissue.detect(predictor, overlap=config.crop // 4, score_threshold=0.0)
            for tissue in negative_validation  # every candidate there is a false one
        ]
        scored += [(f.centres, f.scores, np.zeros((0, 2)), config.mpp) for f in on_tissue]
        centres, scores, truths, radius = pool_fields(scored, config.distance_um)
        weights = np.ones(len(scores))
        if negative_validation:  # the tissue sample stands for the fields the figures are in
            area = sum(tissue.tissue_mm2 for tissue in negative_validation)
            on_tissue_n = sum(len(f) for f in on_tissue)
            weight = max(1.0, len(truths) * config.negative_mm2_per_figure / max(area, 1e-9))
            weights[len(scores) - on_tissue_n :] = weight
        raw, result, f1 = f1_optimal_threshold(
            centres, scores, truths, max_distance=radius, fp_weights=weights
        )
        kept_fp = float(weights[scores >= raw][~result.hits].sum()) if np.isfinite(raw) else 0.0
        threshold = threshold_with_margin(scores, raw)  # same F1, room for new data
        kept = 1.0 if not np.isfinite(threshold) else float(threshold)
        record = {
            "step": step,
            "train_loss": float(np.mean(losses)),
            "val_f1": f1,
            "val_precision": result.tp / max(result.tp + kept_fp, 1e-9) if result.tp else 0.0,
            "val_recall": result.recall,
            "threshold": kept,
            "seconds": time.perf_counter() - started,
        }
        if negative_validation:  # false candidates per mm² of held-out negative tissue
            count = sum(int((f.scores >= kept).sum()) for f in on_tissue)
            area = sum(tissue.tissue_mm2 for tissue in negative_validation)
            record["val_negative_per_mm2"] = count / max(area, 1e-9)
        for tissue in negatives:  # the next round's hard negatives: what it still marks
            tissue.mined = tissue.detect(
                predictor, overlap=config.crop // 4, score_threshold=config.mine_threshold
            ).centres
            record["mined"] = record.get("mined", 0) + len(tissue.mined)
        losses.clear()
        history.append(record)
        if progress is not None:
            progress(step, config.max_steps, record)
        if stopping.improved(record["val_f1"], step):
            card.threshold = record["threshold"]
            card.metrics = {"val_f1": stopping.best, "step": float(step)}
            save_checkpoint(out, model, card, overwrite=True)
        elif stopping.should_stop:
            break
    write_history(log_path, history)
    return DetectorReport(card, stopping.best_step, stopping.best, history)
