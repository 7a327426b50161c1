"""Train a U-Net on image + mask pairs; keep the best checkpoint by validation Dice.

Crops are sampled half around mitoses, half anywhere (mitoses cover ~1 % of a field);
each gets a random dihedral transform (rot90 × flip) and colour jitter. Dice is scikit-learn's
F1 over pixels (the same number), never hand-written.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torchvision.ops import sigmoid_focal_loss
from torchvision.transforms import v2

from napari_mitosis.engine.tiling import crop_origin
from napari_mitosis.engine.training_log import EarlyStopping, write_history
from napari_mitosis.io.output_file import refuse_existing
from napari_mitosis.models.checkpoint import ModelCard, save_checkpoint, training_record
from napari_mitosis.models.inference_model import pick_device
from napari_mitosis.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, load_pretrained
from napari_mitosis.models.stain import StainTraining, card_normaliser
from napari_mitosis.models.unet import resnet_unet, unet

Pair = tuple[np.ndarray, np.ndarray]  # (image (h, w, c) uint8, mask (h, w) bool)


@dataclass
class UNetTraining(StainTraining):
    """Everything that decides a training run (recorded in the model card's notes)."""

    crop: int = 128
    batch_size: int = 8
    max_steps: int = 2000
    eval_every: int = 100
    patience: int = 5  # evaluations without a better validation Dice before stopping
    learning_rate: float = 1e-3
    loss: Literal["dice+bce", "bce", "focal"] = "dice+bce"
    base_width: int = 32
    depth: int = 4
    encoder: str | None = None  # a ResNet encoder (resnet18/34/50) instead of the plain one
    pretrained: str | None = None  # weights for the encoder: torchvision name or local file
    encoder_lr_scale: float = 1.0  # the encoder's learning rate × this (fine-tuning: 0.1)
    freeze_encoder_steps: int = 0  # steps that train the decoder only (fine-tuning)
    init: str | None = None  # a U-Net of ours to fine-tune: a checkpoint or registered name
    positive_fraction: float = 0.5
    brightness: float = 64 / 255
    contrast: float = 0.75
    saturation: float = 0.25
    hue: float = 0.04
    mpp: float | None = 0.25
    threshold: float = 0.5
    seed: int = 0
    device: str = "auto"
    notes: str = ""

    @classmethod
    def small(cls, **overrides: object) -> UNetTraining:
        """A small, fast set-up (base width 8, depth 3, 96 px crops, 150 steps, ~30 s on a
        CPU) for demos and tests on synthetic fields, not for real data."""
        settings = {"crop": 96, "max_steps": 150, "eval_every": 50, "base_width": 8, "depth": 3}
        return cls(**{**settings, **overrides})  # type: ignore[arg-type]


@dataclass
class TrainingReport:
    card: ModelCard
    best_step: int
    best_dice: float
    history: list[dict[str, float]] = field(default_factory=list)


def _check_pairs(pairs: Sequence[Pair], what: str, crop: int) -> None:
    if not pairs:
        raise ValueError(f"no {what} images")
    for i, (image, mask) in enumerate(pairs):
        if image.ndim != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"{what} image {i}: expected (h, w, c) uint8, got {image.shape} {image.dtype}"
            )
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"{what} image {i}: mask {mask.shape} does not match image {image.shape[:2]}"
            )
        if min(mask.shape) < crop:
            raise ValueError(f"{what} image {i}: {mask.shape} is smaller than the {crop} px crop")


class CropSampler:
    """Random augmented crops, half of them containing mitosis pixels."""

    def __init__(
        self,
        pairs: Sequence[Pair],
        config: UNetTraining,
        rng: np.random.Generator,
        normalise: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self.pairs = pairs
        self.normalise = normalise  # the card's stain normalisation, as prediction does
        self.stain_rng = config.stain_rng(config.seed)
        self.config = config
        self.rng = rng
        self.positives = [np.argwhere(mask) for _, mask in pairs]
        self.jitter = v2.ColorJitter(
            config.brightness, config.contrast, config.saturation, config.hue
        )

    def _crop(self) -> Pair:
        c = self.config.crop
        index = int(self.rng.integers(len(self.pairs)))
        image, mask = self.pairs[index]
        pos = self.positives[index]
        centre = None
        if len(pos) and self.rng.random() < self.config.positive_fraction:
            centre = tuple(pos[self.rng.integers(len(pos))])
        y, x = crop_origin(self.rng, mask.shape, c, centre)
        image, mask = image[y : y + c, x : x + c], mask[y : y + c, x : x + c]
        k = int(self.rng.integers(4))  # orthogonal rotations and flips: the dihedral group
        image, mask = np.rot90(image, k), np.rot90(mask, k)
        if self.rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        crops = [self._crop() for _ in range(self.config.batch_size)]
        stained = np.stack([self.config.jitter(im, self.stain_rng) for im, _ in crops])
        if self.normalise is not None:
            stained = self.normalise(stained)
        images = [self.jitter(torch.from_numpy(im).permute(2, 0, 1)) for im in stained]
        masks = torch.from_numpy(np.stack([m for _, m in crops])).float()[:, None]
        return torch.stack(images).float() / 255.0, masks


def _loss(logits: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "focal":
        return sigmoid_focal_loss(logits, target, reduction="mean")
    bce = F.binary_cross_entropy_with_logits(logits, target)
    if kind == "bce":
        return bce
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + dice.mean()


@torch.inference_mode()
def predict_image(
    model: torch.nn.Module, image: np.ndarray, card: ModelCard, device: torch.device
) -> np.ndarray:
    """Whole-image probability (reflect-padded to the U-Net's size multiple)."""
    factor = 2 ** int(card.options.get("depth", 4))
    h, w = image.shape[:2]
    pad = ((0, -h % factor), (0, -w % factor), (0, 0))
    tensor = (
        torch.from_numpy(np.pad(image, pad, mode="reflect")).permute(2, 0, 1)[None].float() / 255.0
    )
    mean = torch.tensor(card.mean).view(1, -1, 1, 1)
    std = torch.tensor(card.std).view(1, -1, 1, 1)
    out = torch.sigmoid(model(((tensor - mean) / std).to(device)))
    return out[0, 0, :h, :w].cpu().numpy()


def dice_score(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Pixel Dice = F1 of the foreground class; 1.0 when both are empty."""
    return float(f1_score(truth.ravel(), predicted.ravel(), zero_division=1.0))


def _model_and_card(config: UNetTraining, channels: int) -> tuple[torch.nn.Module, ModelCard]:
    """The plain U-Net, or one on a ResNet encoder (started from ``pretrained`` weights,
    whose normalisation the card then takes)."""
    if config.pretrained and not config.encoder:
        raise ValueError("pretrained weights need a ResNet encoder (encoder='resnet34', …)")
    if config.encoder:
        options: dict[str, object] = {
            "encoder": config.encoder,
            "in_channels": channels,
            "depth": 5,
        }
        model: torch.nn.Module = resnet_unet(**options)  # type: ignore[arg-type]
    else:
        options = {"in_channels": channels, "base_width": config.base_width, "depth": config.depth}
        model = unet(**options)  # type: ignore[arg-type]
    card = ModelCard(
        architecture="resnet_unet" if config.encoder else "unet",
        options=options,
        task="segmentation",
        input_size=config.crop * 2,
        mpp=config.mpp,
        mean=(0.5,) * channels,
        std=(0.25,) * channels,
        threshold=config.threshold,
        notes=config.notes,
        stain=config.stain_record(),
        training=training_record(config),
    )
    if config.init is not None:
        return _initial_model(config, card, channels)
    if config.pretrained:
        record = load_pretrained(model.encoder, config.pretrained)
        card.mean, card.std = IMAGENET_MEAN[:channels], IMAGENET_STD[:channels]
        card.training = {**(card.training or {}), "pretrained_weights": record}
    return model, card


def _initial_model(
    config: UNetTraining, card: ModelCard, channels: int
) -> tuple[torch.nn.Module, ModelCard]:
    """The ``init`` U-Net with its architecture and normalisation; this run's card
    otherwise (the data's µm/px, training record, notes)."""
    from napari_mitosis.models.checkpoint import load_checkpoint

    model, base = load_checkpoint(str(config.init), task="segmentation")
    if int(base.options.get("in_channels", 3)) != channels:
        raise ValueError(
            f"{config.init}: takes {base.options.get('in_channels', 3)}-channel images, "
            f"these are {channels}-channel"
        )
    card.architecture, card.options = base.architecture, dict(base.options)
    card.mean, card.std, card.mpp = base.mean, base.std, card.mpp or base.mpp
    card.stain = base.stain or card.stain
    card.training = {**(card.training or {}), "init": str(config.init)}
    return model, card


def _parameter_groups(model: torch.nn.Module, config: UNetTraining) -> list[dict[str, object]]:
    """Discriminative learning rates: the (pretrained) encoder learns ``encoder_lr_scale``
    times as fast as the decoder, so fine-tuning adapts it without erasing it."""
    lr = config.learning_rate
    if not config.encoder:
        return [{"params": list(model.parameters()), "lr": lr}]
    encoder = list(model.encoder.parameters())
    own = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in own]
    return [
        {"params": encoder, "lr": lr * config.encoder_lr_scale},
        {"params": rest, "lr": lr},
    ]


def train_unet(
    train: Sequence[Pair],
    validation: Sequence[Pair],
    out: str | Path,
    config: UNetTraining | None = None,
    *,
    overwrite: bool = False,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> TrainingReport:
    """Train, evaluating every ``eval_every`` steps; the best model is saved to ``out``
    (safetensors + card) and the per-evaluation log to ``out`` with suffix ``.csv``."""
    config = config or UNetTraining()
    out = Path(out)
    log_path = out.with_suffix(".csv")
    refuse_existing((out, log_path), overwrite=overwrite)
    _check_pairs(train, "training", config.crop)
    _check_pairs(validation, "validation", 0)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = pick_device(config.device)
    channels = train[0][0].shape[2]
    model, card = _model_and_card(config, channels)
    model = model.to(device)
    mean = torch.tensor(card.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(card.std, device=device).view(1, -1, 1, 1)
    optimiser = torch.optim.Adam(_parameter_groups(model, config))
    sampler = CropSampler(train, config, rng, card_normaliser(card))
    history: list[dict[str, float]] = []
    stopping = EarlyStopping(config.patience)
    losses: list[float] = []
    started = time.perf_counter()
    for step in range(1, config.max_steps + 1):
        if config.freeze_encoder_steps and config.encoder:
            model.encoder.requires_grad_(step > config.freeze_encoder_steps)
        model.train()
        images, masks = sampler.batch()
        logits = model((images.to(device) - mean) / std)
        loss = _loss(logits, masks.to(device), config.loss)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
        if step % config.eval_every and step != config.max_steps:
            continue
        model.eval()
        dices = [
            dice_score(mask, predict_image(model, image, card, device) >= config.threshold)
            for image, mask in validation
        ]
        record = {
            "step": step,
            "train_loss": float(np.mean(losses)),
            "val_dice": float(np.mean(dices)),
            "seconds": time.perf_counter() - started,
        }
        losses.clear()
        history.append(record)
        if progress is not None:
            progress(step, config.max_steps, record)
        if stopping.improved(record["val_dice"], step):
            card.metrics = {"val_dice": stopping.best, "step": float(step)}
            save_checkpoint(out, model, card, overwrite=True)
        elif stopping.should_stop:
            break
    write_history(log_path, history)
    return TrainingReport(card, stopping.best_step, stopping.best, history)
