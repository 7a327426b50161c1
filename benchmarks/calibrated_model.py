"""Untrained models that behave like trained ones for timing and comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint


def calibrate_batch_norm(model: torch.nn.Module, slide: Path, card: ModelCard) -> torch.nn.Module:
    """Batch-norm statistics from the slide's own patches, as training would leave them, and
    a last layer scaled to give logits of s.d. 1: an untrained deep model's sigmoid would
    otherwise give exactly 0 or 1 everywhere, and such heatmaps compare nothing."""
    level = open_slide(slide).sources[0]
    rng = np.random.default_rng(0)
    size = card.input_size
    corners = rng.integers(0, min(level.shape[:2]) - size, (4, 16, 2))
    mean = torch.tensor(card.mean).view(1, 3, 1, 1)
    std = torch.tensor(card.std).view(1, 3, 1, 1)
    batches = [
        torch.from_numpy(
            np.stack([np.asarray(level[y : y + size, x : x + size]) for y, x in batch])
        )
        .permute(0, 3, 1, 2)
        .float()
        .div(255)
        .sub(mean)
        .div(std)
        for batch in corners
    ]
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
        # Then the last layer is scaled so that logits have mean 0 and s.d. 1 on these patches.
        model.eval()
        logits = torch.cat([model(x) for x in batches])
        head = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        head[-1].weight.div_(logits.std())
        head[-1].bias.sub_(logits.mean()).div_(logits.std())
    return model


def calibrated_classifier(
    work: Path, slide: Path, architecture: str, patch: int
) -> tuple[ModelCard, torch.nn.Module, Path]:
    """A seeded, calibrated tumour classifier for ``patch`` px at 0.5 µm/px, saved in ``work``."""
    card = ModelCard(
        architecture,
        {"outputs": 1},
        task="classification",
        input_size=patch,
        mpp=0.5,
        classes=("normal", "tumour"),
    )
    torch.manual_seed(0)
    model = calibrate_batch_norm(build_model(card), slide, card)
    return card, model, save_checkpoint(work / "model.safetensors", model, card)


def classify_args(
    slide: Path, checkpoint: Path, out: Path, *, patch: int, batch: int, device: str
) -> list[str]:
    """``-m napari_mitosis classify`` as the benchmarks run it: one cell per patch, every cell
    with any tissue."""
    return [
        "-m",
        "napari_mitosis",
        "classify",
        str(slide),
        "--model",
        str(checkpoint),
        "--out",
        str(out),
        "--stride",
        str(patch),
        "--min-tissue",
        "0.01",
        "--batch-size",
        str(batch),
        "--device",
        device,
    ]
