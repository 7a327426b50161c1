"""Our checkpoint through TIAToolbox's `PatchPredictor` on one slide (for bench_vs_peers).

Runs inside TIAToolbox's own environment (`make bench-peers` builds .bench/tiatoolbox:
TIAToolbox 2.1 pins torch < 2.13, so that environment has torch 2.9.1 and napari-mitosis
beside it, and ours is timed there too, on the same torch). Writes ``coordinates`` (level-0
x0, y0, x1, y1) and tumour ``probability`` per patch to ``out/patches.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import zarr
from tiatoolbox.models.engine.io_config import IOPatchPredictorConfig
from tiatoolbox.models.engine.patch_predictor import PatchPredictor
from tiatoolbox.models.models_abc import ModelABC
from tiatoolbox.wsicore.wsireader import OpenSlideWSIReader

from napari_mitosis.models.checkpoint import load_checkpoint


class CheckpointModel(ModelABC):
    """A napari-mitosis classifier as a TIAToolbox model: uint8 NHWC in, the card's
    normalisation, [P(normal), P(tumour)] out."""

    def __init__(self, checkpoint: Path) -> None:
        super().__init__()
        self.model, card = load_checkpoint(checkpoint, task="classification")
        self.register_buffer("mean", torch.tensor(card.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(card.std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std
        tumour = torch.sigmoid(self.model(x)[:, 0])
        return torch.stack([1 - tumour, tumour], dim=1)

    @staticmethod
    def infer_batch(model: torch.nn.Module, batch_data: torch.Tensor, device: str) -> np.ndarray:
        model.eval()
        with torch.inference_mode():
            return model(batch_data.to(device)).cpu().numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--mpp", type=float, default=0.5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    predictor = PatchPredictor(
        CheckpointModel(args.checkpoint),
        batch_size=args.batch,
        num_workers=args.workers,
        device=args.device,
        verbose=False,
    )
    config = IOPatchPredictorConfig(
        input_resolutions=[{"units": "mpp", "resolution": args.mpp}],
        patch_input_shape=(args.patch, args.patch),
        stride_shape=(args.patch, args.patch),
    )
    saved = predictor.run(
        [OpenSlideWSIReader(args.slide)],  # as WSInfer and ours read it (µm from OpenSlide)
        patch_mode=False,
        ioconfig=config,
        save_dir=args.out,
        output_type="zarr",
        return_probabilities=True,
    )
    store = zarr.open(str(next(iter(saved.values()))), mode="r")
    np.savez(
        args.out / "patches.npz",
        coordinates=store["coordinates"][:],
        probability=store["probabilities"][:, 1],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
