"""The model card: what a model needs to be run correctly on a new image, and the
architectures our own checkpoints name.

A card travels inside our safetensors checkpoints (their header), or as a JSON file
beside a TorchScript or ONNX model (`card_from_json`); WSInfer model folders get one
built from their ``config.json``. `card_schema` is the JSON Schema of the file form,
published in the docs.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the card itself needs no torch: `models list` and the CLI start fast
    from torch import nn


@dataclass
class ModelCard:
    """What a model needs to be run correctly on a new image."""

    architecture: str  # a key of FACTORIES (ours), or the published model's own name
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
    #: "centred": an ``input_size`` patch at the pyramid level nearest ``mpp``, centred on
    #: each cell. "wsinfer": WSInfer's rule — round(input_size × mpp / image µm/px) level-0
    #: pixels from a grid at the origin, resized to ``input_size``.
    patching: str = "centred"
    #: How a patch of another size becomes ``input_size``: "bilinear" (antialiased, on
    #: float tensors) or "pil-bilinear" (Pillow on 8-bit pixels, as torchvision's Resize
    #: on PIL images — what WSInfer models were trained and are run with).
    resize: str = "bilinear"
    #: How far (as a fraction) a slide level's µm/px may be from ``mpp`` and still be read
    #: as it is; further, tiles are resampled to ``mpp`` (`io.resampled`).
    mpp_tolerance: float = 0.1

    def level0_patch(self, image_mpp: float) -> int:
        """Level-0 pixels a ``patching="wsinfer"`` patch covers on an image of
        ``image_mpp`` µm/px (WSInfer: ``round(patch_size_pixels × spacing / mpp)``)."""
        if self.mpp is None:
            return self.input_size
        return max(1, round(self.input_size * self.mpp / image_mpp))


def trained_on(card: ModelCard) -> str:
    """The card's provenance as one line a user reads before trusting a result."""
    return f"trained on: {card.notes}" if card.notes else "trained on: not recorded in its card"


#: Field descriptions for the published JSON Schema (the comments above, for readers).
FIELD_HELP = {
    "architecture": "a napari-mitosis architecture, or the published model's own name",
    "options": "keyword arguments of the architecture's factory (ours: num_classes, …); "
    "members: N for an ensemble of N such models whose logits are averaged; calibrated: "
    "true when each member's logit is first scaled and shifted (its calibration row)",
    "task": "classification, segmentation or detection",
    "input_size": "pixels per side the model reads",
    "mpp": "µm per pixel of its training images (null: pixel units)",
    "mean": "per-channel mean subtracted from [0, 1] input",
    "std": "per-channel standard deviation the input is divided by",
    "classes": "class names; two-class models score classes[1]",
    "threshold": "probability at which a two-class model calls classes[1]",
    "notes": "provenance",
    "metrics": "held-out metrics of the model",
    "context": "two-tower classifiers: context patch side as a multiple of the patch",
    "centre_crop": "whole-image classifiers: central pixels kept before resizing",
    "stain": "stain normalisation applied to input (method, reference statistics)",
    "training": "the resolved training configuration",
    "patching": "centred (ours) or wsinfer (WSInfer's patch grid)",
    "resize": "bilinear (float, antialiased) or pil-bilinear (Pillow on 8-bit pixels)",
    "mpp_tolerance": "largest relative difference between a level's µm/px and mpp at which "
    "the level is read as it is; beyond it, tiles are resampled to mpp",
}

#: architecture → (module, factory). Imported on use: torchvision costs ≈2 s of start-up
#: (it loads torch._dynamo), which a U-Net or small-CNN command never needs.
FACTORIES = {
    "unet": ("napari_mitosis.models.unet", "unet"),
    "resnet_unet": ("napari_mitosis.models.unet", "resnet_unet"),
    "faster_rcnn": ("napari_mitosis.models.detector", "faster_rcnn"),
    "fcos": ("napari_mitosis.models.one_stage", "fcos"),
    "retinanet": ("napari_mitosis.models.one_stage", "retinanet"),
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
    module, name = FACTORIES[card.architecture]
    factory = getattr(importlib.import_module(module), name)
    options = dict(card.options)
    members = int(options.pop("members", 1))  # a cross-validated ensemble of this many
    calibrated = bool(options.pop("calibrated", False))  # its members' logits rescaled
    if members > 1:
        from napari_mitosis.models.classifiers import Ensemble

        return Ensemble([factory(**options) for _ in range(members)], calibrated=calibrated)
    return factory(**options)


def training_record(config: Any) -> dict[str, Any]:
    """Every field of a training configuration dataclass, JSON-safe, for the card: what
    a recipe resolved to, flags and defaults included."""
    return json.loads(json.dumps(asdict(config), default=str))


def card_from_dict(record: dict[str, Any], source: str | Path = "model card") -> ModelCard:
    """A card from its JSON form; unknown or missing fields are named with ``source``."""
    if not isinstance(record, dict):
        raise ValueError(f"{source}: a model card is a JSON object")
    known = {f.name for f in dataclasses.fields(ModelCard)}
    unknown = sorted(set(record) - known)
    if unknown:
        raise ValueError(f"{source}: unknown model card fields {unknown}; known: {sorted(known)}")
    record = dict(record)
    for key in ("mean", "std", "classes"):
        if key in record:
            record[key] = tuple(record[key])
    try:
        return ModelCard(**record)
    except TypeError as err:
        raise ValueError(f"{source}: not a model card ({err})") from None


def card_from_json(path: str | Path) -> ModelCard:
    """The card in a ``*.card.json`` file (the form `card_schema` describes)."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such model card") from None
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable model card JSON file ({err})") from None
    return card_from_dict(record, path)


def card_to_json(card: ModelCard) -> str:
    return json.dumps(asdict(card), indent=1)


def _json_type(annotation: Any) -> dict[str, Any]:
    """The JSON Schema of one field's (string) annotation."""
    text = str(annotation)
    nullable = "None" in text
    base = text.replace(" | None", "")
    kinds = {
        "str": {"type": "string"},
        "int": {"type": "integer"},
        "float": {"type": "number"},
        "dict[str, Any]": {"type": "object"},
        "dict[str, float]": {"type": "object", "additionalProperties": {"type": "number"}},
        "tuple[float, ...]": {"type": "array", "items": {"type": "number"}},
        "tuple[str, ...]": {"type": "array", "items": {"type": "string"}},
    }
    schema = dict(kinds[base])
    if nullable:
        schema["type"] = [schema["type"], "null"]
    return schema


def card_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a model card file, from the dataclass itself."""
    properties = {}
    for item in dataclasses.fields(ModelCard):
        schema = _json_type(item.type)
        schema["description"] = FIELD_HELP[item.name]
        default = item.default
        if item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        if default is not dataclasses.MISSING:
            schema["default"] = list(default) if isinstance(default, tuple) else default
        properties[item.name] = schema
    properties["patching"]["enum"] = ["centred", "wsinfer"]
    properties["resize"]["enum"] = ["bilinear", "pil-bilinear"]
    properties["task"]["enum"] = ["classification", "segmentation", "detection"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "napari-mitosis model card",
        "type": "object",
        "properties": properties,
        "required": ["architecture"],
        "additionalProperties": False,
    }
