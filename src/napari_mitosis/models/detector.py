"""Mitosis detection with torchvision's Faster R-CNN: factory, tile predictor, tile merger.

Built with ``weights=None`` (and no backbone weights unless the user gives a path), anchors
sized for mitotic figures (5–15 µm ≈ 20–60 px at 0.25 µm/px) instead of COCO's, and no
resizing (``min_size = max_size = tile``) so pixels keep their µm size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file
from torchvision.models.detection import (
    FasterRCNN,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.vgg import vgg16
from torchvision.ops import MultiScaleRoIAlign

from napari_mitosis.models.checkpoint import ModelCard
from napari_mitosis.models.inference_model import pick_device
from napari_mitosis.models.stain import card_normaliser

Backbone = Literal["mobilenet_v3", "resnet50_v2", "vgg16"]
BACKBONES: tuple[str, ...] = ("mobilenet_v3", "resnet50_v2", "vgg16")


def _vgg16_faster_rcnn(common: dict[str, Any], anchor_sizes: tuple[int, ...]) -> FasterRCNN:
    """The original article's layout: VGG-16 conv5_3 (stride 16, 512 channels), one map."""
    body = vgg16(weights=None).features[:-1]  # drop the last pooling: keep stride 16
    body.out_channels = 512
    options = {k: v for k, v in common.items() if k not in ("weights", "weights_backbone")}
    return FasterRCNN(
        body,
        rpn_anchor_generator=AnchorGenerator((anchor_sizes,), ((0.5, 1.0, 2.0),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=7, sampling_ratio=2),
        **options,
    )


def faster_rcnn(
    *,
    backbone: Backbone = "mobilenet_v3",
    num_classes: int = 2,
    tile: int = 512,
    anchor_sizes: tuple[int, ...] = (16, 32, 64),
    score_threshold: float = 0.05,
) -> FasterRCNN:
    """Faster R-CNN for small objects; ``num_classes`` counts the background."""
    ratios = ((0.5, 1.0, 2.0),)
    common: dict[str, Any] = {
        "weights": None,
        "weights_backbone": None,
        "num_classes": num_classes,
        "min_size": tile,
        "max_size": tile,
        "box_score_thresh": score_threshold,
        # A tile holds a handful of mitoses, not COCO's crowds: 64 sampled RoIs per image
        # and fewer proposals (COCO: 512 and 2000). With COCO's numbers an untrained RPN
        # feeds 2,000 RoIs per crop through the box head and CPU steps take 3–4 s, not 0.6 s.
        "box_batch_size_per_image": 64,
        "rpn_pre_nms_top_n_train": 1000,
        "rpn_post_nms_top_n_train": 500,
        "rpn_pre_nms_top_n_test": 500,
        "rpn_post_nms_top_n_test": 300,
    }
    if backbone == "mobilenet_v3":
        model = fasterrcnn_mobilenet_v3_large_fpn(**common)
        # Three FPN maps; every map gets every size (this backbone's usual layout).
        anchors = AnchorGenerator((anchor_sizes,) * 3, ratios * 3)
    elif backbone == "resnet50_v2":
        model = fasterrcnn_resnet50_fpn_v2(**common)
        # Five FPN maps, finest first: one size each, doubling.
        anchors = AnchorGenerator(tuple((anchor_sizes[0] * 2**i,) for i in range(5)), ratios * 5)
    elif backbone == "vgg16":
        return _vgg16_faster_rcnn(common, anchor_sizes)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    # The builders fix COCO anchors (32–512 px); mitoses need smaller ones.
    model.rpn.anchor_generator = anchors
    per_location = anchors.num_anchors_per_location()[0]
    if model.rpn.head.cls_logits.out_channels != per_location:
        depth = len(model.rpn.head.conv)
        model.rpn.head = RPNHead(model.backbone.out_channels, per_location, conv_depth=depth)
    return model


def load_backbone_weights(model: FasterRCNN, path: str | Path) -> int:
    """Copy the tensors of a classification checkpoint (a file the user has, or a
    torchvision weights name such as ``MobileNet_V3_Large_Weights.IMAGENET1K_V1``,
    downloaded when online) into the detector's backbone; returns how many were used.

    Read safely: safetensors, or ``torch.load(weights_only=True)``. Keys are matched after
    dropping the prefixes torchvision and training scripts add (``features.``, ``module.``).
    """
    path = Path(path)
    if not path.is_file() and "_Weights." in str(path):  # a torchvision weights name
        from napari_mitosis.models.pretrained import state_from_torchvision

        state = state_from_torchvision(str(path))
    elif not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    else:
        try:
            if path.suffix == ".safetensors":
                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a readable weights file ({err})") from err
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    target = model.backbone.body.state_dict()
    fitting = {}
    for key, tensor in state.items():
        name = key
        for prefix in ("module.", "backbone.body.", "features."):
            name = name.removeprefix(prefix)
        if name in target and target[name].shape == tensor.shape:
            fitting[name] = tensor
    if not fitting:
        raise ValueError(f"{path}: no tensor fits this detector's backbone")
    model.backbone.body.load_state_dict(fitting, strict=False)
    return len(fitting)


class DetectionPredictor:
    """uint8 (N, t, t, 3) tiles → per tile (boxes xyxy in tile pixels, scores, labels).

    torchvision's detection models normalise inside; AMP (float16) on CUDA only.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        device: str | torch.device = "auto",
        *,
        tile: int | None = None,
    ) -> None:
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.card = card
        # Tiles larger than the training crops waste less on overlap; the model's own
        # resize then targets the new size, so pixels still keep their µm size.
        self.tile = int(tile or card.input_size)
        self.normalise = card_normaliser(card)
        if tile and hasattr(self.model, "transform"):
            self.model.transform.min_size = (self.tile,)
            self.model.transform.max_size = self.tile

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray | torch.Tensor) -> list[dict[str, np.ndarray]]:
        """Boxes for (n, t, t, 3) uint8 tiles, or (n, 3, t, t) uint8 tensors already on the
        device (`engine.device_tiles`)."""
        if isinstance(tiles, torch.Tensor):
            batch = tiles.to(self.device).float() / 255.0
        else:
            if self.normalise is not None:
                tiles = self.normalise(np.asarray(tiles))
            batch = (
                torch.from_numpy(np.ascontiguousarray(tiles))
                .to(self.device)
                .permute(0, 3, 1, 2)
                .float()
                / 255.0
            )
        with torch.autocast(
            self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"
        ):
            outputs = self.model(list(batch))
        return [
            {k: v.float().cpu().numpy() if k != "labels" else v.cpu().numpy() for k, v in o.items()}
            for o in outputs
        ]
