"""Checkpoints = safetensors weights + a model card, so inference needs no extra flags.

The card (architecture, its keyword options, input size, µm/pixel, normalisation, classes,
threshold, provenance) lives in the safetensors header, which is plain JSON: loading never
unpickles anything.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from napari_mitosis.io.output_file import atomic_output

CARD_KEY = "napari_mitosis.model_card"


@dataclass
class ModelCard:
    """What a model needs to be run correctly on a new image."""

    architecture: str  # a key of MODEL_FACTORIES
    options: dict[str, Any] = field(default_factory=dict)  # factory keyword arguments
    task: str = "segmentation"
    input_size: int = 256  # pixels per side the model was trained on
    mpp: float | None = 0.25  # µm/pixel of its training images (None: pixel units)
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # per-channel normalisation of [0, 1] input
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    classes: tuple[str, ...] = ("background", "mitosis")
    threshold: float = 0.5
    notes: str = ""  # provenance, e.g. "demo model, trained on synthetic data"
    metrics: dict[str, float] = field(default_factory=dict)
    context: float | None = None  # two-tower classifiers: context patch = patch × this, in µm
    centre_crop: int | None = None  # whole-image classifiers: keep the central N px first
    stain: dict[str, Any] | None = None  # `stain.StainNormaliser.as_dict`, applied to input
    training: dict[str, Any] | None = None  # the resolved training configuration (recipe)


#: architecture → (module, factory). Imported on use: torchvision costs ≈2 s of start-up
#: (it loads torch._dynamo), which a U-Net or small-CNN command never needs.
FACTORIES = {
    "unet": ("napari_mitosis.models.unet", "unet"),
    "faster_rcnn": ("napari_mitosis.models.detector", "faster_rcnn"),
    "small_cnn": ("napari_mitosis.models.classifiers", "small_cnn"),
    "wide_resnet": ("napari_mitosis.models.classifiers", "wide_resnet_classifier"),
    "inception_v3": ("napari_mitosis.models.classifiers", "inception_v3_classifier"),
    "two_tower": ("napari_mitosis.models.classifiers", "two_tower"),
    "resnet18": ("napari_mitosis.models.pretrained", "resnet18_classifier"),
    "resnet50": ("napari_mitosis.models.pretrained", "resnet50_classifier"),
    "densenet121": ("napari_mitosis.models.pretrained", "densenet121_classifier"),
    "efficientnet_b0": ("napari_mitosis.models.pretrained", "efficientnet_b0_classifier"),
    "convnext_tiny": ("napari_mitosis.models.pretrained", "convnext_tiny_classifier"),
}


def build_model(card: ModelCard) -> nn.Module:
    if card.architecture not in FACTORIES:
        raise ValueError(f"unknown architecture {card.architecture!r}; known: {sorted(FACTORIES)}")
    module, factory = FACTORIES[card.architecture]
    return getattr(importlib.import_module(module), factory)(**card.options)


def training_record(config: Any) -> dict[str, Any]:
    """Every field of a training configuration dataclass, JSON-safe, for the card: what
    a recipe resolved to, flags and defaults included."""
    return json.loads(json.dumps(asdict(config), default=str))


def save_checkpoint(
    path: str | Path, model: nn.Module, card: ModelCard, *, overwrite: bool = False
) -> Path:
    """Write weights and card atomically as one .safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path, overwrite=overwrite) as tmp:
        # Written into the temporary file atomic_output made, so the checkpoint gets the
        # permissions the user's umask gives, as every other output (save_file would
        # create a private 0600 file of its own).
        tmp.write_bytes(safetensors_bytes(tensors, metadata={CARD_KEY: json.dumps(asdict(card))}))
    return Path(path)


def read_card(path: str | Path) -> ModelCard:
    """The model card alone (cheap: reads the header only)."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path}: not a readable safetensors checkpoint ({err}); checkpoints are "
            "safetensors files with a model card (the train-* commands write them), and "
            "pickles (torch.save) are never loaded, since loading one can run any code"
        ) from err
    if CARD_KEY not in meta:
        raise ValueError(
            f"{path}: has no napari-mitosis model card; was it saved by napari-mitosis?"
        )
    record = json.loads(meta[CARD_KEY])
    for key in ("mean", "std", "classes"):
        record[key] = tuple(record[key])
    return ModelCard(**record)


def load_checkpoint(
    path: str | Path, *, task: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Model (eval mode, on ``device``) and card; ``task`` guards against the wrong kind."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    card = read_card(path)
    if task is not None and card.task != task:
        raise ValueError(f"{path}: is a {card.task} model, not a {task} model")
    outputs = card.options.get("num_classes")
    if outputs is not None and outputs != len(card.classes):
        raise ValueError(
            f"{path}: its card names {len(card.classes)} classes {list(card.classes)} but the "
            f"model has {outputs} outputs"
        )
    model = build_model(card)
    state = load_file(str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not fit its {card.architecture} card ({err})"
        ) from err
    return model.to(device).eval(), card
