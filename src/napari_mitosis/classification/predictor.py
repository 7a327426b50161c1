"""Classifier input → class probabilities: normalisation, stain, resizing, grey ↔ RGB,
test-time augmentation, and the model's sigmoid or softmax."""

from __future__ import annotations

import numpy as np
import torch

from napari_mitosis.models.card import ModelCard
from napari_mitosis.models.inference_model import (
    channels_last,
    forward_amp,
    predicting_model,
)
from napari_mitosis.models.stain import card_normaliser

#: ITU-R BT.601 luma, for greyscale models fed RGB.
LUMA = (0.299, 0.587, 0.114)


def pil_resize(tiles: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, H, W[, C]) tiles resized to ``size``² by Pillow's bilinear filter — what
    torchvision's ``Resize`` does to PIL images, so WSInfer models see their own pixels."""
    from PIL import Image

    resample = Image.Resampling.BILINEAR
    return np.stack([np.asarray(Image.fromarray(t).resize((size, size), resample)) for t in tiles])


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of a (N, C, H, W) batch (test-time augmentation)."""
    views = [torch.rot90(x, k, dims=(2, 3)) for k in range(4)]
    return views + [torch.flip(v, dims=(3,)) for v in views]


def tta_views(x: torch.Tensor, flips: str = "dihedral") -> list[torch.Tensor]:
    """The views test-time augmentation averages: those the model trained on, so an
    image with an up (ultrasound: ``flips="horizontal"``) is never seen upside down."""
    return [x, torch.flip(x, dims=(3,))] if flips == "horizontal" else dihedral_views(x)


class ClassifierPredictor:
    """uint8 (N, H, W, C) patches → (N,) probability of the positive class (``classes[1]``)
    for one-output (sigmoid) models, or (N, K) class probabilities (softmax) for K outputs.

    Greyscale models get BT.601 luma of RGB input; input of another size is resized to
    the card's; ``tta`` averages the 8 dihedral views (left-right flips only for a model
    trained with ``flips="horizontal"``); None (the default) does so for a model trained
    with ``tta`` (``trained_with_tta``: its threshold was chosen on averaged scores) and
    not for others. On CUDA ``amp`` runs the model under float16 autocast; ``amp=False``
    gives the CPU's float32 answers (within 1e-4).
    ``optimise`` predicts with a `for_inference` copy (batch norm folded, channels-last);
    training passes False so that scores follow the model being trained.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: ModelCard,
        device: str | torch.device = "auto",
        *,
        tta: bool | None = None,
        optimise: bool = True,
        amp: bool = True,
    ) -> None:
        self.device, self.model = predicting_model(model, device, optimise=optimise)
        self.card = card
        self.trained_with_tta = bool((card.training or {}).get("tta", False))
        self.tta = self.trained_with_tta if tta is None else tta
        self.flips = str((card.training or {}).get("flips", "dihedral"))
        self.amp = amp and self.device.type == "cuda"  # float16 autocast (`forward_amp`)
        self.in_channels = int(card.options.get("in_channels", 3))
        towers = 2 if card.architecture == "two_tower" else 1
        mean = torch.tensor(card.mean * towers, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(card.std * towers, device=self.device).view(1, -1, 1, 1)
        self.mean, self.std = mean, std
        self.luma = torch.tensor(LUMA, device=self.device).view(1, 3, 1, 1)
        self.normalise = card_normaliser(card)

    def prepare(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Model input from (n, h, w, c) uint8 patches, or (n, c, h, w) uint8 tensors
        already on the device (`engine.device_tiles`)."""
        if isinstance(tiles, torch.Tensor):
            x = tiles.to(self.device).float().div_(255.0)
            return self._resized_and_normalised(x)
        if self.normalise is not None:
            tiles = self.normalise(np.asarray(tiles))
        size = self.card.input_size
        if self.card.resize == "pil-bilinear" and tiles.shape[1:3] != (size, size):
            tiles = pil_resize(np.asarray(tiles), size)
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device)
        if x.ndim == 3:
            x = x[..., None]
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        if self.in_channels == 1 and x.shape[1] % 3 == 0:
            x = torch.cat([(g * self.luma).sum(1, keepdim=True) for g in x.split(3, dim=1)], 1)
        elif self.in_channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self._resized_and_normalised(x)

    def _resized_and_normalised(self, x: torch.Tensor) -> torch.Tensor:
        size = self.card.input_size
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(
                x, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        return (x - self.mean) / self.std

    @torch.inference_mode()
    def outputs(self) -> int:
        """How many probabilities the model gives per patch (1: a sigmoid score), from one
        forward pass of a blank patch, the first time it is asked."""
        if getattr(self, "_outputs", None) is None:
            size, channels = self.card.input_size, self.mean.shape[1]
            blank = torch.zeros(1, channels, size, size, device=self.device)
            self._outputs = int(self._logits(channels_last(blank)).shape[1])
        return self._outputs

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, outputs) logits; published models may give (N,) for one output."""
        logits = forward_amp(self.model, x, self.amp)
        return logits[:, None] if logits.ndim == 1 else logits

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray | torch.Tensor) -> np.ndarray:
        x = channels_last(self.prepare(tiles))
        views = tta_views(x, self.flips) if self.tta else [x]
        total = None
        for view in views:
            logits = self._logits(view)
            probs = torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(1)
            total = probs if total is None else total + probs
        return (total / len(views)).cpu().numpy()
