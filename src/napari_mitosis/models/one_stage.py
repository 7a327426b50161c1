"""One-stage torchvision detectors (FCOS, RetinaNet) on a ResNet/ResNeXt FPN backbone.

Built the way the MIDOG 2025 track-1 reference builds its FCOS (a torchvision ResNe(X)t
with plain batch norm, an FPN over the chosen layers, one anchor size per map from 8 px
doubling, no resizing: ``min_size = max_size = tile``), so its state dict loads into ours
key for key; every number a publisher sets (thresholds, detections per image, layers)
comes from the model card's ``options``. Built with ``weights=None``: nothing downloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

#: torchvision's ResNet family, any of which can carry the FPN.
RESNETS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


def _backbone(
    backbone: str, returned_layers: Sequence[int], extra_blocks: bool
) -> tuple[BackboneWithFPN, AnchorGenerator]:
    """The FPN backbone and its anchors: one square anchor per map, 8 px on the finest
    and doubling per ResNet stage returned (the reference's ((8,), (16,), …) choice)."""
    if backbone not in RESNETS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(RESNETS)}")
    layers = list(returned_layers)
    body = resnet_fpn_backbone(
        backbone_name=backbone,
        weights=None,
        norm_layer=nn.BatchNorm2d,  # as trained: plain batch norm, not torchvision's frozen
        trainable_layers=5,
        returned_layers=layers,
        extra_blocks=LastLevelP6P7(256, 256) if extra_blocks else LastLevelMaxPool(),
    )
    sizes = ((8,), (16,), (32,), (64,), (128,))
    anchor_sizes = (sizes[0], *(sizes[i] for i in layers))
    return body, AnchorGenerator(anchor_sizes, ((1.0,),) * len(anchor_sizes))


def _built(
    kind: type[FCOS] | type[RetinaNet],
    backbone: str,
    num_classes: int,
    tile: int,
    returned_layers: Sequence[int],
    extra_blocks: bool,
    **head: Any,
) -> Any:
    body, anchors = _backbone(backbone, returned_layers, extra_blocks)
    return kind(body, num_classes, min_size=tile, max_size=tile, anchor_generator=anchors, **head)


def fcos(
    *,
    backbone: str = "resnet50",
    num_classes: int = 2,
    tile: int = 1024,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_blocks: bool = False,
    score_threshold: float = 0.2,
    nms_threshold: float = 0.6,
    detections_per_img: int = 300,
    topk_candidates: int = 1000,
    center_sampling_radius: float = 1.5,
) -> FCOS:
    """FCOS as the MIDOG 2025 reference makes it (`num_classes` counts the background)."""
    return _built(
        FCOS, backbone, num_classes, tile, returned_layers, extra_blocks,
        score_thresh=score_threshold, nms_thresh=nms_threshold,
        detections_per_img=detections_per_img, topk_candidates=topk_candidates,
        center_sampling_radius=center_sampling_radius,
    )  # fmt: skip


def retinanet(
    *,
    backbone: str = "resnet50",
    num_classes: int = 2,
    tile: int = 1024,
    returned_layers: Sequence[int] = (1, 2, 3, 4),
    extra_blocks: bool = False,
    score_threshold: float = 0.05,
    nms_threshold: float = 0.5,
    detections_per_img: int = 300,
    topk_candidates: int = 1000,
) -> RetinaNet:
    """RetinaNet on the same backbone and anchors."""
    return _built(
        RetinaNet, backbone, num_classes, tile, returned_layers, extra_blocks,
        score_thresh=score_threshold, nms_thresh=nms_threshold,
        detections_per_img=detections_per_img, topk_candidates=topk_candidates,
    )  # fmt: skip
