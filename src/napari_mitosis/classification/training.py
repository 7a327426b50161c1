"""Train a patch/image classifier; keep the best checkpoint by a chosen validation metric.

Two classes train one sigmoid output (binary cross-entropy, the positive class weighted by
the negatives' share); K > 2 classes (tissue types) a softmax over K outputs (cross-entropy
with inverse-frequency class weights), scored by `multiclass_metrics` and called by the
argmax, so their card has no threshold to tune.

Each epoch shows every training image once, augmented with the 8 orthogonal rotations/flips
and colour jitter (torchvision transforms v2, the same parameters for a two-tower model's
patch and context); after each epoch the validation set is scored with scikit-learn (AUC,
F1, F_med, loss), the best epoch's weights and card (two classes: with the F_med- or
F1-optimal threshold) are saved, and training stops after ``patience`` epochs without
improvement. Images of another size are resized to the input.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

from napari_mitosis.classification.metrics import (
    MONITORED,
    best_threshold,
    binary_metrics,
    multiclass_metrics,
)
from napari_mitosis.classification.run import ClassifierPredictor
from napari_mitosis.engine.training_log import EarlyStopping, write_history
from napari_mitosis.io.output_file import refuse_existing
from napari_mitosis.models.checkpoint import (
    ModelCard,
    build_model,
    save_checkpoint,
    training_record,
)
from napari_mitosis.models.inference_model import pick_device
from napari_mitosis.models.pretrained import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    freeze_all_but_head,
    load_pretrained,
    parameter_groups,
)
from napari_mitosis.models.stain import StainTraining

ARCHITECTURES = (
    "small_cnn",
    "wide_resnet",
    "inception_v3",
    "two_tower",
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
)
# images (N, H, W, C) uint8, labels (N,) 0…K−1; a two-class training set may add soft
# targets (N,) in [0, 1]: the positive class's probability, e.g. the share of experts for it
Labelled = tuple[np.ndarray, ...]


@dataclass
class ClassifierTraining(StainTraining):
    architecture: str = "small_cnn"
    tower: str = "small_cnn"  # two_tower only
    width: int = 32  # small_cnn (and small towers) channel width
    depth: int = 4  # small_cnn blocks (each more one doubles what the network sees)
    input_size: int = 96  # inception_v3 wants 299
    classes: tuple[str, ...] = ("normal", "tumour")  # two: a sigmoid; more: a softmax
    epochs: int = 30
    batch_size: int = 32
    optimiser: str = "adam"  # or "sgd" (Nesterov momentum 0.9)
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "constant"  # or "cosine": the rate falls to 0 over ``epochs``
    #: > 0: validate and keep an exponential moving average of the weights (this decay per
    #: step, warmed up), not the last step's weights (0: off)
    ema: float = 0.0
    #: the model is meant to run with its flips averaged (test-time augmentation): the
    #: kept epoch's validation scores and threshold are taken so, and so is every
    #: prediction from its card unless told otherwise
    tta: bool = False
    class_weights: bool = True
    monitor: str | None = None  # auc, f1, f_med or loss; None: auc (2 classes), f1 (K)
    patience: int = 5
    brightness: float = 64 / 255
    contrast: float = 0.75
    saturation: float = 0.25
    hue: float = 0.04
    #: "dihedral": the 8 rotations/flips (histology has no up); "horizontal": left-right
    #: flips only (ultrasound: the skin is at the top)
    flips: str = "dihedral"
    #: random crops of at least this share of the image's area, resized back (1: none)
    crop_scale: float = 1.0
    mpp: float | None = None  # µm/pixel of the patches (None: whole images, pixel units)
    context: float | None = None  # two_tower: context patch covers this × the patch side
    centre_crop: int | None = None  # whole images were cropped to their central N px
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    seed: int = 0
    device: str = "auto"
    notes: str = ""
    label_votes: tuple[str, ...] = ()  # labels.csv columns whose share is the soft target
    # how the command chose its examples (splits, folds, patches per class…), for the card
    data_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # torchvision weights name or a local state-dict file
    freeze_epochs: int = 0  # epochs that train the last layer only (fine-tuning)
    backbone_lr_scale: float = 1.0  # all but the last layer learn at lr × this (e.g. 0.1)
    init: str | None = None  # a classifier of ours to fine-tune: a checkpoint or registered name


@dataclass
class ClassifierReport:
    card: ModelCard
    best_epoch: int
    best_value: float
    history: list[dict[str, float]] = field(default_factory=list)
    monitor: str = "auc"  # the metric ``best_value`` is of


class Augmenter:
    """Flips (dihedral or left-right), optional random crops and colour jitter per sample;
    patch and context share the parameters."""

    def __init__(
        self, config: ClassifierTraining, channels: int, rng: np.random.Generator | None = None
    ) -> None:
        self.config, self.rng = config, rng or np.random.default_rng(config.seed)
        self.group = 1 if channels == 1 else 3
        jitter = (
            v2.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)
            if self.group == 3
            else v2.ColorJitter(config.brightness, config.contrast)
        )
        if config.flips not in ("dihedral", "horizontal"):
            raise ValueError(f"flips must be 'dihedral' or 'horizontal', got {config.flips!r}")
        steps: list[Any] = [v2.RandomHorizontalFlip()]
        if config.flips == "dihedral":
            steps += [
                v2.RandomVerticalFlip(),
                v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            ]
        self.steps, self.jitter, self.transform = steps, jitter, None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        image = self.config.jitter(image, self.rng)  # HED first: it needs the stored colours
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if self.transform is None:  # crops resize back to the images' own size
            crop = []
            if self.config.crop_scale < 1:
                scale = (self.config.crop_scale, 1.0)
                crop = [v2.RandomResizedCrop(tuple(image.shape[:2]), scale=scale, antialias=True)]
            self.transform = v2.Compose([*self.steps, *crop, self.jitter])
        parts = [tv_tensors.Image(p) for p in tensor.split(self.group, dim=0)]
        out = self.transform(*parts) if len(parts) > 1 else (self.transform(parts[0]),)
        return torch.cat([o.as_subclass(torch.Tensor) for o in out], 0).permute(1, 2, 0).numpy()


def _check(data: Labelled, what: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = np.asarray(data[0]), np.asarray(data[1]).astype(int)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or len(images) != len(labels):
        raise ValueError(f"{what}: expected N images (N, H, W, C) and N labels")
    if not len(labels) or set(np.unique(labels)) - set(range(classes)):
        raise ValueError(f"{what}: labels must be 0…{classes - 1} and not empty")
    return images, labels


def _targets(data: Labelled, labels: np.ndarray, classes: int) -> np.ndarray:
    """What the loss is taken against: the soft targets a two-class set carries, else
    its labels."""
    if len(data) < 3 or data[2] is None:
        return labels
    if classes != 2:
        raise ValueError("soft targets (label votes) need two classes")
    targets = np.asarray(data[2], np.float32)
    if targets.shape != labels.shape or not np.all((targets >= 0) & (targets <= 1)):
        raise ValueError("training set: soft targets must be one value in [0, 1] per image")
    return targets


def _options(config: ClassifierTraining, channels: int) -> dict[str, Any]:
    if config.architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.architecture!r}; choose {ARCHITECTURES}")
    in_channels = channels // 2 if config.architecture == "two_tower" else channels
    outputs = 1 if len(config.classes) == 2 else len(config.classes)
    options: dict[str, Any] = {"outputs": outputs, "in_channels": in_channels}
    if config.architecture in ("small_cnn", "two_tower"):
        options["width"] = config.width
    if config.depth != 4 and config.architecture != "small_cnn":
        raise ValueError(f"depth sets small_cnn's blocks; {config.architecture} has its own")
    if config.architecture == "small_cnn" and config.depth != 4:  # 4: cards before depth
        options["depth"] = config.depth
    if config.architecture == "two_tower":
        options["tower"] = config.tower
    return options


def train_classifier(
    train: Labelled,
    validation: Labelled,
    out: str | Path,
    config: ClassifierTraining | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> ClassifierReport:
    """Train on (images, labels[, soft targets]); validate each epoch on (images, labels);
    save the best to ``out`` (+ ``.csv``)."""
    config = config or ClassifierTraining()
    if config.monitor is not None and config.monitor not in MONITORED:
        raise ValueError(f"monitor must be one of {MONITORED}, got {config.monitor!r}")
    out = Path(out)
    log_path = out.with_suffix(".csv")
    refuse_existing((out, log_path), overwrite=overwrite)
    k = len(config.classes)
    if k < 2:
        raise ValueError(f"a classifier needs at least two classes, got {config.classes}")
    # K classes are called by the argmax, which a saturated AUC does not follow
    monitor = config.monitor or ("auc" if k == 2 else "f1")
    images, labels = _check(train, "training set", k)
    targets = _targets(train, labels, k)
    val_images, val_labels = _check(validation, "validation set", k)
    missing = [config.classes[c] for c in range(k) if not np.any(labels == c)]
    if missing:
        raise ValueError(f"training set: no examples of {', '.join(missing)}")
    if images.shape[3] != val_images.shape[3]:
        raise ValueError("training and validation images have different channel counts")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device(config.device)
    channels = images.shape[3]
    if config.architecture == "two_tower" and (channels % 2 or not config.context):
        raise ValueError("two_tower trains on patch + context channels and needs `context`")
    options = _options(config, channels)
    group = options["in_channels"]
    card = ModelCard(
        config.architecture,
        options,
        task="classification",
        input_size=config.input_size,
        mpp=config.mpp,
        mean=tuple(config.mean[:group]) if group in (1, 3) else config.mean,
        std=tuple(config.std[:group]) if group in (1, 3) else config.std,
        classes=tuple(config.classes),
        threshold=0.5,
        notes=config.notes,
        context=config.context,
        centre_crop=config.centre_crop,
        stain=config.stain_record(),
        training=training_record(config),
    )
    model = build_model(card) if config.init is None else _initial_model(config, card)
    if config.pretrained:
        record = load_pretrained(model, config.pretrained)
        card.mean, card.std = IMAGENET_MEAN, IMAGENET_STD  # what such weights expect
        card.training = {**(card.training or {}), "pretrained_weights": record}
    model = model.to(device)
    groups = parameter_groups(model, config.learning_rate, config.backbone_lr_scale)
    if config.optimiser == "sgd":
        optimiser: torch.optim.Optimizer = torch.optim.SGD(
            groups,
            lr=config.learning_rate,
            momentum=0.9,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
    elif config.optimiser == "adam":
        optimiser = torch.optim.Adam(
            groups, lr=config.learning_rate, weight_decay=config.weight_decay
        )
    else:
        raise ValueError(f"optimiser must be adam or sgd, got {config.optimiser!r}")
    scheduler = _scheduler(optimiser, config)
    loss_fn = _loss(labels, k, config.class_weights, device)
    augment = Augmenter(config, channels, config.stain_rng(config.seed))
    # epochs are validated on single views, 8× quicker than with ``tta``
    predictor = ClassifierPredictor(model, card, device, tta=False, optimise=False)
    averaged = _averaged(model, config.ema)
    # what is validated and saved: the averaged weights when there are any
    kept = (
        predictor
        if averaged is None
        else ClassifierPredictor(averaged.module, card, device, tta=False, optimise=False)
    )
    stopping = EarlyStopping(config.patience)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        if config.freeze_epochs:
            freeze_all_but_head(model, frozen=epoch <= config.freeze_epochs)
        model.train()
        losses = []
        rate = max(g["lr"] for g in optimiser.param_groups)  # this epoch's (the last layer's)
        order = rng.permutation(len(images))
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:  # batch norm needs two samples
                continue
            batch = np.stack([augment(images[i]) for i in index])
            x = predictor.prepare(batch)
            loss = loss_fn(model(x), torch.from_numpy(targets[index]).to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if averaged is not None:
                averaged.update_parameters(model)
            losses.append(float(loss.detach()))
        if scheduler is not None:
            scheduler.step()
        scores = _scores(kept, val_images)
        with torch.no_grad():
            val_loss = float(loss_fn.of_probabilities(scores, val_labels))
        if k == 2:
            threshold = best_threshold(val_labels, scores, "f1" if monitor == "f1" else "f_med")
            metrics: Any = binary_metrics(val_labels, scores, threshold)
        else:
            threshold, metrics = 0.5, multiclass_metrics(val_labels, scores)
        record = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "lr": rate,
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in metrics.as_dict().items() if k != "n"},
            "seconds": time.perf_counter() - started,
        }
        history.append(record)
        if progress is not None:
            progress(epoch, config.epochs, record)
        value = -val_loss if monitor == "loss" else record[f"val_{monitor}"]
        if stopping.improved(value, epoch):
            card.threshold = threshold
            card.metrics = {k: float(v) for k, v in record.items() if k.startswith("val_")}
            card.metrics["epoch"] = float(epoch)
            save_checkpoint(out, kept.model, card, overwrite=True)
        elif stopping.should_stop:
            break
    if config.tta and out.exists():
        _rescore_with_tta(out, card, val_images, val_labels, monitor, device)
    write_history(log_path, history)
    best = stopping.best if monitor != "loss" else -stopping.best
    return ClassifierReport(card, stopping.best_step, best, history, monitor)


def _rescore_with_tta(
    out: Path,
    card: ModelCard,
    images: np.ndarray,
    labels: np.ndarray,
    monitor: str,
    device: torch.device,
) -> None:
    """The kept epoch's validation metrics and threshold again, from its flip-averaged
    scores (how the card says it runs); epochs were chosen on single views, 8× quicker."""
    from napari_mitosis.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(out, task="classification", device=device)
    scores = _scores(ClassifierPredictor(model, card, device, tta=True, optimise=False), images)
    if len(card.classes) == 2:
        card.threshold = best_threshold(labels, scores, "f1" if monitor == "f1" else "f_med")
        metrics: Any = binary_metrics(labels, scores, card.threshold)
    else:
        metrics = multiclass_metrics(labels, scores)
    card.metrics.update({f"val_{k}": float(v) for k, v in metrics.as_dict().items() if k != "n"})
    save_checkpoint(out, model, card, overwrite=True)


def _scheduler(
    optimiser: torch.optim.Optimizer, config: ClassifierTraining
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """None (a constant rate) or cosine annealing to 0 over ``epochs``: small steps late
    settle the weights that early stopping keeps."""
    if config.schedule == "constant":
        return None
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.epochs)
    raise ValueError(f"schedule must be 'constant' or 'cosine', got {config.schedule!r}")


def _averaged(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """None, or an exponential moving average of ``model``'s weights and batch-norm
    statistics (torch's `AveragedModel`). Why: on a few hundred noisy labels the
    validation score of single steps' weights jumps by 0.1 from epoch to epoch, and the
    average of the last few hundred steps is steadier and generalises better (Polyak
    averaging). Warmed up as timm does: step t averages with min(decay, (1+t)/(10+t)), so
    the random start does not linger."""
    if not decay:
        return None
    if not 0 < decay < 1:
        raise ValueError(f"ema must be 0 (off) or a decay between 0 and 1, got {decay}")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    def average(averaged: Any, current: Any, updates: Any) -> None:
        step = int(updates)
        get_ema_multi_avg_fn(min(decay, (1 + step) / (10 + step)))(averaged, current, updates)

    return AveragedModel(model, multi_avg_fn=average, use_buffers=True)


def _initial_model(config: ClassifierTraining, card: ModelCard) -> nn.Module:
    """The ``init`` classifier, its network, input and normalisation taken over by
    ``card``; a new last layer where its classes differ in number."""
    from napari_mitosis.models.checkpoint import load_checkpoint

    base_model, base = load_checkpoint(str(config.init), task="classification")
    if int(base.options.get("members", 1)) > 1:
        raise ValueError(
            f"{config.init}: an ensemble of {base.options['members']} models cannot be "
            "fine-tuned as one; fine-tune a single model (train-classifier without --folds)"
        )
    if base.architecture not in ARCHITECTURES or base.context != card.context:
        raise ValueError(
            f"{config.init}: a {base.architecture} model"
            f"{' with context' if base.context else ''} cannot be fine-tuned here; "
            "start from one trained by train-classifier"
        )
    card.architecture = base.architecture
    card.options = {**base.options, "outputs": card.options["outputs"]}
    card.input_size, card.mean, card.std = base.input_size, base.mean, base.std
    model = build_model(card)
    own = model.state_dict()
    state = base_model.state_dict()
    model.load_state_dict(
        {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}, strict=False
    )
    card.training = {**(card.training or {}), "init": str(config.init)}
    return model


class _Loss(nn.Module):
    """Weighted binary (one output) or K-class cross-entropy on logits and 0…K−1 labels;
    ``of_probabilities`` scores the predictor's probabilities (the validation loss)."""

    def __init__(self, weights: torch.Tensor, binary: bool) -> None:
        super().__init__()
        self.binary = binary
        self.weights = weights
        if binary:
            self.fn: nn.Module = nn.BCEWithLogitsLoss(pos_weight=weights)
        else:
            self.fn = nn.CrossEntropyLoss(weight=weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.binary:  # labels may be soft: the positive class's probability
            return self.fn(logits[:, 0], labels.float())
        return self.fn(logits, labels.long())

    def of_probabilities(self, probabilities: np.ndarray, labels: np.ndarray) -> torch.Tensor:
        p = torch.from_numpy(np.asarray(probabilities, np.float32)).clamp(1e-6, 1 - 1e-6)
        p = p.to(self.weights.device)
        y = torch.from_numpy(np.asarray(labels)).to(self.weights.device)
        if self.binary:
            return self.fn(torch.logit(p), y.float())
        return nn.functional.nll_loss(torch.log(p), y.long(), weight=self.weights)


def _loss(labels: np.ndarray, k: int, weighted: bool, device: torch.device) -> _Loss:
    """Class weights by inverse frequency (binary: the positive class weighted by
    negatives / positives), or none."""
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    if k == 2:
        weight = counts[0] / counts[1] if weighted else 1.0
        return _Loss(torch.tensor(float(weight), device=device), binary=True)
    weights = counts.sum() / (k * counts) if weighted else np.ones(k)
    return _Loss(torch.tensor(weights, dtype=torch.float32, device=device), binary=False)


def _scores(predictor: ClassifierPredictor, images: np.ndarray, batch: int = 64) -> np.ndarray:
    predictor.model.eval()
    return np.concatenate([predictor(images[i : i + batch]) for i in range(0, len(images), batch)])
