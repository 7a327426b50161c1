"""The field's published model formats, run through our engine.

- **WSInfer model folders**: ``config.json`` (WSInfer's schema: architecture, classes,
  ``patch_size_pixels`` at ``spacing_um_px``, a Resize/ToTensor/Normalize transform) beside
  ``torchscript_model.pt``, or ``model.safetensors`` / ``pytorch_model.bin`` holding the
  state dict of a timm ``architecture`` (timm: the ``timm`` extra).
- **TorchScript or ONNX files** with one of our model cards beside them as JSON
  (``model.pt`` + ``model.card.json``, or a folder with ``card.json`` and one model file).

Nothing here unpickles: TorchScript archives are read by TorchScript's own loader,
ONNX by onnxruntime (the ``onnx`` extra), and ``.bin``/``.pt`` state dicts only with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_mitosis.models.card import ModelCard, build_model, card_from_json

WSINFER_CONFIG = "config.json"
#: Model files a WSInfer folder may hold, in the order they are tried.
WSINFER_WEIGHTS = ("torchscript_model.pt", "model.safetensors", "pytorch_model.bin")
CARD_FILE = "card.json"
MODEL_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".onnx", ".bin")
KNOWN_TRANSFORMS = ("Resize", "ToTensor", "Normalize")


def is_wsinfer_folder(path: Path) -> bool:
    return path.is_dir() and (path / WSINFER_CONFIG).is_file()


def card_file_for(path: Path) -> Path | None:
    """The card JSON of a TorchScript/ONNX model: ``X.card.json`` beside ``X.pt``, or
    ``card.json`` in a model folder; None when there is none."""
    if path.is_dir():
        return path / CARD_FILE if (path / CARD_FILE).is_file() else None
    beside = path.with_name(path.stem + ".card.json")
    return beside if beside.is_file() else None


def is_published(path: Path) -> bool:
    """A model in one of this module's formats (else: our safetensors checkpoint)."""
    return is_wsinfer_folder(path) or card_file_for(path) is not None


def _model_file(folder: Path) -> Path:
    files = [p for p in sorted(folder.iterdir()) if p.suffix in MODEL_SUFFIXES]
    if len(files) != 1:
        raise ValueError(
            f"{folder}: a model folder holds card.json and one model file "
            f"({', '.join(MODEL_SUFFIXES)}); found {[p.name for p in files] or 'none'}"
        )
    return files[0]


# --- WSInfer ------------------------------------------------------------------------------
def wsinfer_card(folder: str | Path) -> ModelCard:
    """Our card for a WSInfer model folder, checked against WSInfer's config schema."""
    folder = Path(folder)
    path = folder / WSINFER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable WSInfer config ({err})") from None
    missing = [
        k
        for k in (
            "spec_version",
            "architecture",
            "num_classes",
            "class_names",
            "patch_size_pixels",
            "spacing_um_px",
            "transform",
        )
        if k not in config
    ]
    if missing:
        raise ValueError(f"{path}: a WSInfer config needs {missing}")
    if str(config["spec_version"]) != "1.0":
        raise ValueError(f"{path}: WSInfer config spec {config['spec_version']!r}; known: 1.0")
    classes = [str(c) for c in config["class_names"]]
    count = int(config["num_classes"])
    if count < 1 or len(classes) != count:
        raise ValueError(f"{path}: num_classes is {count} but class_names has {len(classes)}")
    size = int(config["patch_size_pixels"])
    spacing = float(config["spacing_um_px"])
    if size < 1 or not spacing > 0:
        raise ValueError(f"{path}: patch_size_pixels and spacing_um_px must be positive")
    mean, std, resized = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), False
    for step in config["transform"]:
        name, arguments = step.get("name"), step.get("arguments") or {}
        if name not in KNOWN_TRANSFORMS:
            raise ValueError(f"{path}: transform {name!r} is not one of {KNOWN_TRANSFORMS}")
        if name == "Resize":
            wanted = arguments.get("size")
            wanted = wanted if isinstance(wanted, list) else [wanted, wanted]
            if [int(v) for v in wanted] != [size, size]:
                raise ValueError(
                    f"{path}: Resize to {wanted}, but patch_size_pixels is {size}; only a "
                    "resize to the patch size is defined by WSInfer's patching"
                )
            resized = True
        elif name == "Normalize":
            mean = tuple(float(v) for v in arguments["mean"])
            std = tuple(float(v) for v in arguments["std"])
    if not resized:  # WSInfer would hand the model patches of another size: refuse it
        raise ValueError(f"{path}: the transform has no Resize to {size} px")
    return ModelCard(
        architecture=str(config["architecture"]),
        options={"num_classes": count},
        task="classification",
        input_size=size,
        mpp=spacing,
        mean=mean,
        std=std,
        # One output is a sigmoid score of the one class: our two-class convention.
        classes=tuple(classes) if count > 1 else (f"not {classes[0]}", classes[0]),
        notes=f"WSInfer model {folder.name}",
        patching="wsinfer",
        resize="pil-bilinear",
    )


def _timm_model(architecture: str, classes: int, weights: Path) -> nn.Module:
    try:
        import timm
    except ModuleNotFoundError:
        raise ValueError(
            f"{weights}: a {architecture} state dict is built with timm; install it with "
            "`pip install napari-mitosis[timm]`"
        ) from None
    try:
        model = timm.create_model(architecture, pretrained=False, num_classes=classes)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"{weights}: timm has no architecture {architecture!r} ({err})") from None
    _load_state(model, weights, architecture)
    return model


def _load_state(model: nn.Module, weights: Path, architecture: str) -> None:
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # pickles holding code: refused by weights_only
            raise ValueError(
                f"{weights}: not a plain state dict ({err}); only tensors are loaded, "
                "never pickled code"
            ) from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{weights}: weights do not fit {architecture} ({err})") from None


def load_wsinfer(folder: str | Path) -> tuple[nn.Module, ModelCard]:
    folder = Path(folder)
    card = wsinfer_card(folder)
    for name in WSINFER_WEIGHTS:
        weights = folder / name
        if weights.is_file():
            break
    else:
        raise ValueError(f"{folder}: a WSInfer model folder needs one of {list(WSINFER_WEIGHTS)}")
    if name == "torchscript_model.pt":
        return load_torchscript(weights), card
    return _timm_model(card.architecture, int(card.options["num_classes"]), weights), card


# --- TorchScript, ONNX and state dicts with our card ----------------------------------------
def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding compiled ``code/``; ``torch.save`` zips
    hold only a pickle and tensors."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


def load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but it is what zoos ship
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").eval()
    except RuntimeError as err:
        raise ValueError(f"{path}: not a readable TorchScript model ({err})") from None


class OnnxModel(nn.Module):
    """An onnxruntime session as a module: (N, C, H, W) float tensors in, logits out.
    ``inference_ready``: predictors run it as it is (no tracing, no copying)."""

    inference_ready = True

    def __init__(self, path: Path) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ModuleNotFoundError:
            raise ValueError(
                f"{path}: ONNX models run with onnxruntime; install it with "
                "`pip install napari-mitosis[onnx]`"
            ) from None
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types
            raise ValueError(f"{path}: not a readable ONNX model ({err})") from None
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().float().contiguous().cpu().numpy()
        out = self.session.run(None, {self.input_name: batch})[0]
        return torch.from_numpy(np.asarray(out, np.float32)).to(x.device)


def load_with_card(path: str | Path) -> tuple[nn.Module, ModelCard]:
    """A TorchScript, ONNX or state-dict model and the card JSON beside it."""
    path = Path(path)
    card_path = card_file_for(path)
    if card_path is None:
        raise ValueError(f"{path}: no model card beside it ({path.stem}.card.json)")
    card = card_from_json(card_path)
    model_path = _model_file(path) if path.is_dir() else path
    if model_path.suffix == ".onnx":
        return OnnxModel(model_path), card
    if is_torchscript(model_path):
        return load_torchscript(model_path), card
    model = build_model(card)  # a state dict of one of our architectures
    _load_state(model, model_path, card.architecture)
    return model.eval(), card


def read_published_card(path: str | Path) -> ModelCard:
    path = Path(path)
    if is_wsinfer_folder(path):
        return wsinfer_card(path)
    card_path = card_file_for(path)
    if card_path is None:
        raise ValueError(f"{path}: no model card beside it ({path.stem}.card.json)")
    return card_from_json(card_path)


def load_published(path: str | Path) -> tuple[nn.Module, ModelCard]:
    path = Path(path)
    return load_wsinfer(path) if is_wsinfer_folder(path) else load_with_card(path)


def model_files(path: str | Path) -> list[Path]:
    """Every file a model consists of (what the registry copies)."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    card = card_file_for(path)
    return [path, *([card] if card else [])]


def describe_source(path: Path) -> dict[str, Any]:
    """The format of a model, for the registry and cohort records."""
    if is_wsinfer_folder(path):
        return {"format": "wsinfer"}
    if card_file_for(path) is not None:
        model = _model_file(path) if path.is_dir() else path
        kind = "onnx" if model.suffix == ".onnx" else "torchscript"
        if kind == "torchscript" and not is_torchscript(model):
            kind = "state-dict"
        return {"format": kind}
    return {"format": "napari-mitosis"}
