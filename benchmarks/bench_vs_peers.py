"""Whole-slide patch classification: napari-mitosis vs WSInfer, same slide, same model and
weights, same patch grid, both from their command lines, in one run.

WSInfer (https://wsinfer.readthedocs.io) takes a local TorchScript model and a JSON
config; it is installed only for this benchmark, in its own environment (it needs
zarr < 3, we need zarr ≥ 3), with the same torch build as ours:

    make bench-peers      # creates .bench/peers with wsinfer, then runs this script

Both tools cut non-overlapping patches of the same size at the same µm/px and read them
through OpenSlide; the script matches patches by their level-0 corner and reports the wall
time of each command, patches/s, and the largest probability difference on shared patches
(goal: ours ≥ 2× faster, same probabilities within 1e-3).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mitosis.checkpoint import ModelCard, build_model, save_checkpoint
from napari_mitosis.slide import open_slide
from napari_mitosis.synthetic import write_synthetic_slide

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # ours (this environment)
PEERS = ROOT / ".bench" / "peers" / "bin"  # WSInfer's own environment (it pins zarr < 3)


class Probability(torch.nn.Module):
    """Our classifier with its normalisation inside, as WSInfer's Normalize step expects."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # one logit: WSInfer applies the sigmoid


# WSInfer's CLI downloads its model-zoo registry at import; we pass a local model, so an
# empty registry stands in for it (this machine has no network).
OFFLINE_WSINFER = (
    "import sys, wsinfer_zoo.client as c; "
    "c.load_registry = lambda *a, **k: c.ModelRegistry(models={}); "
    "from wsinfer.cli.cli import cli; sys.argv[0] = 'wsinfer'; cli()"
)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--size", type=int, default=6144)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if shutil.which("wsinfer", path=str(PEERS)) is None:
        print("wsinfer is not installed here: run `make bench-peers`")
        return 1
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "slides").mkdir()
        slide_path = work / "slides" / "slide.tif"
        write_synthetic_slide(slide_path, args.size, args.size, mpp=0.5, seed=7)
        card = ModelCard(
            args.architecture,
            {"outputs": 1},
            task="classification",
            input_size=args.patch,
            mpp=0.5,
            classes=("normal", "tumour"),
        )
        model = build_model(card).eval()
        checkpoint = save_checkpoint(work / "model.safetensors", model, card)
        scripted = torch.jit.script(Probability(model))
        scripted.save(str(work / "model.pt"))
        config = {
            "spec_version": "1.0",
            "architecture": args.architecture,
            "num_classes": 1,
            "class_names": ["tumour"],
            "patch_size_pixels": args.patch,
            "spacing_um_px": 0.5,
            "transform": [
                {"name": "Resize", "arguments": {"size": args.patch}},
                {"name": "ToTensor"},
                {
                    "name": "Normalize",
                    "arguments": {"mean": list(card.mean), "std": list(card.std)},
                },
            ],
        }
        (work / "config.json").write_text(json.dumps(config))

        theirs = timed(
            [
                str(PEERS / "python"),
                "-c",
                OFFLINE_WSINFER,
                "--backend",
                "openslide",
                "run",
                "--wsi-dir",
                str(work / "slides"),
                "--results-dir",
                str(work / "wsinfer"),
                "--model-path",
                str(work / "model.pt"),
                "--config",
                str(work / "config.json"),
                "--batch-size",
                str(args.batch),
                "--num-workers",
                "2",
            ]
        )
        with (work / "wsinfer" / "model-outputs-csv" / "slide.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        corners = np.array([(float(r["miny"]), float(r["minx"])) for r in rows])
        their_probs = np.array([float(r["prob_tumour"]) for r in rows])

        # Ours: the same grid (stride = patch) over every cell, then the same patches.
        ours = timed(
            [
                str(BIN / "napari-mitosis"),
                "classify",
                str(slide_path),
                "--model",
                str(checkpoint),
                "--out",
                str(work / "ours"),
                "--stride",
                str(args.patch),
                "--min-tissue",
                "0.01",
                "--batch-size",
                str(args.batch),
                "--device",
                "cpu",
            ]
        )
        with open_slide(work / "ours" / "slide.tumour_probability.tif") as heat:
            heatmap = np.asarray(heat.levels[0])
        cells = (corners / args.patch).astype(int)
        inside = (cells[:, 0] < heatmap.shape[0]) & (cells[:, 1] < heatmap.shape[1])
        ours_at = heatmap[cells[inside, 0], cells[inside, 1]]
        analysed = ours_at > 0
        diff = np.abs(ours_at[analysed] - their_probs[inside][analysed])
        ours_cells = int((heatmap > 0).sum())
    print(f"{args.architecture}, {args.patch} px patches at 0.5 µm/px, {args.size}² px slide, CPU")
    print(
        f"  WSInfer 0.6.1        {theirs:7.1f} s  {len(rows):5d} patches  {len(rows) / theirs:6.1f}/s"
    )
    print(
        f"  napari-mitosis       {ours:7.1f} s  {ours_cells:5d} patches  {ours_cells / ours:6.1f}/s"
    )
    print(
        f"  speed-up per patch: {(ours_cells / ours) / (len(rows) / theirs):.2f}×  (goal ≥ 2×); "
        f"wall time ratio {theirs / ours:.2f}×"
    )
    print(
        f"  shared patches: {int(analysed.sum())}; max |Δ probability| = "
        f"{diff.max() if len(diff) else float('nan'):.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
