"""Classifiers on the backbones the field fine-tunes (ResNet, DenseNet, EfficientNet,
ConvNeXt), and pretrained weights for them: a torchvision weights name (downloaded and
cached by torchvision when online) or a local state-dict file (safetensors, or a PyTorch
file read with ``weights_only=True``, which cannot run code).

Every factory builds its network with ``weights=None`` (no download) and a new last layer
of ``outputs`` logits; `load_pretrained` then fills in every tensor whose name and shape
match, and says what it loaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: architecture → (torchvision factory, the attribute holding its last layer)
BACKBONES: dict[str, tuple[str, str]] = {
    "resnet18": ("resnet18", "fc"),
    "resnet50": ("resnet50", "fc"),
    "densenet121": ("densenet121", "classifier"),
    "efficientnet_b0": ("efficientnet_b0", "classifier"),
    "convnext_tiny": ("convnext_tiny", "classifier"),
}
#: What ImageNet-pretrained weights expect of their input, on [0, 1] RGB.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def head_name(model: nn.Module) -> str:
    """The attribute holding a classifier's last layer (what fine-tuning trains first)."""
    for name in ("fc", "classifier", "head"):
        if hasattr(model, name):
            return name
    raise ValueError(f"{type(model).__name__}: no fc/classifier/head layer")


def _last_linear(layer: nn.Module) -> tuple[nn.Module, str | int | None]:
    """The Linear at the end of a head (itself, or the last of a Sequential)."""
    if isinstance(layer, nn.Linear):
        return layer, None
    if isinstance(layer, nn.Sequential):
        index = max(i for i, m in enumerate(layer) if isinstance(m, nn.Linear))
        return layer[index], index
    raise ValueError(f"cannot find the last linear layer of {type(layer).__name__}")


def backbone_classifier(
    *, backbone: str = "resnet18", outputs: int = 1, in_channels: int = 3
) -> nn.Module:
    """A torchvision ``backbone`` with a new last layer of ``outputs`` logits."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose {sorted(BACKBONES)}")
    if in_channels != 3:
        raise ValueError(f"{backbone} takes RGB input (in_channels=3)")
    import torchvision.models as tvm  # on use: torchvision is slow to import

    factory, head = BACKBONES[backbone]
    model = getattr(tvm, factory)(weights=None)
    layer = getattr(model, head)
    linear, index = _last_linear(layer)
    new = nn.Linear(linear.in_features, outputs)
    if index is None:
        setattr(model, head, new)
    else:
        layer[index] = new
    return model


def resnet18_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    return backbone_classifier(backbone="resnet18", outputs=outputs, in_channels=in_channels)


def resnet50_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    return backbone_classifier(backbone="resnet50", outputs=outputs, in_channels=in_channels)


def densenet121_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    return backbone_classifier(backbone="densenet121", outputs=outputs, in_channels=in_channels)


def efficientnet_b0_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    return backbone_classifier(backbone="efficientnet_b0", outputs=outputs, in_channels=in_channels)


def convnext_tiny_classifier(*, outputs: int = 1, in_channels: int = 3) -> nn.Module:
    return backbone_classifier(backbone="convnext_tiny", outputs=outputs, in_channels=in_channels)


def _state_from_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a pickle that needs more than tensors, or not PyTorch at all
        raise ValueError(
            f"{path}: not a state dict of tensors that loads without running code ({err})"
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items() if torch.is_tensor(v)}


def state_from_torchvision(name: str) -> dict[str, torch.Tensor]:
    """Torchvision's weights ``name``, from its cache or downloaded; offline, an error that
    says where to put the file."""
    import torchvision.models as tvm

    try:
        weights = tvm.get_weight(name)
    except (ValueError, KeyError, AttributeError) as err:
        raise ValueError(
            f"{name!r}: neither a file nor a torchvision weights name "
            f"(e.g. ResNet18_Weights.IMAGENET1K_V1) ({err})"
        ) from None
    try:
        return weights.get_state_dict(progress=False)
    except (OSError, RuntimeError) as err:  # offline, a proxy, a broken download
        cache = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise ValueError(
            f"{name}: the weights could not be downloaded ({err}); offline, put the file "
            f"{Path(weights.url).name} at {cache}, or give --pretrained a local file"
        ) from None


def load_pretrained(model: nn.Module, source: str | Path) -> dict[str, Any]:
    """Fill ``model`` with every tensor of ``source`` whose name and shape match (the new
    last layer keeps its fresh weights); return what the card records."""
    path = Path(source)
    if path.is_file():
        state = _state_from_file(path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        state = state_from_torchvision(str(source))
        digest = None
    own = model.state_dict()
    matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matching:
        raise ValueError(f"{source}: none of its tensors fits a {type(model).__name__}")
    model.load_state_dict(matching, strict=False)
    return {
        "source": str(source),
        "sha256": digest,
        "loaded": len(matching),
        "of": len(own),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
    }


def freeze_all_but_head(model: nn.Module, frozen: bool) -> None:
    """Train only the last layer (``frozen``) or everything: the first epochs of a
    fine-tune keep a pretrained backbone from being wrecked by a random head."""
    head = head_name(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = not frozen or name.startswith(f"{head}.")


def parameter_groups(model: nn.Module, lr: float, backbone_scale: float) -> list[dict[str, Any]]:
    """Discriminative learning rates: the last layer at ``lr``, the rest at
    ``lr × backbone_scale``, so a fine-tune adapts pretrained features without erasing
    them (one group when the scale is 1)."""
    if backbone_scale == 1.0:
        return [{"params": list(model.parameters()), "lr": lr}]
    head = head_name(model)
    named = list(model.named_parameters())
    return [
        {
            "params": [p for n, p in named if not n.startswith(f"{head}.")],
            "lr": lr * backbone_scale,
        },
        {"params": [p for n, p in named if n.startswith(f"{head}.")], "lr": lr},
    ]
