"""Whole-slide patch classification: napari-mitosis vs WSInfer and TIAToolbox — same slide,
same model and weights, same patch grid, each through its own entry point, in one run.

The peers are installed only for this benchmark, each in its own environment
(`make bench-peers` builds them): WSInfer 0.6.1 in .bench/peers (it pins zarr < 3; same
torch 2.14.1 as ours), TIAToolbox 2.1.3 in .bench/tiatoolbox (it pins torch < 2.13, so that
environment has torch 2.9.1 — and napari-mitosis, which is timed there a second time so
each comparison is on one torch build). ``--wsinfer-python`` / ``--tiatoolbox-python``
point at other interpreters (a GPU box whose packages come as wheels).

- WSInfer takes a local TorchScript model + JSON config through its CLI; it runs as it
  comes and with ``--speedup`` (it then freezes and optimises the TorchScript model, as
  ours folds batch norm into the convolutions).
- TIAToolbox's `PatchPredictor` runs our checkpoint wrapped as its `ModelABC`
  (benchmarks/tiatoolbox_patch_predictor.py), reading the slide with its OpenSlide reader.
- Ours: ``napari-mitosis classify`` with stride = patch.

Every tool cuts non-overlapping patches at the same µm/px through OpenSlide and detects
tissue its own way, on ``--device`` (CUDA: each tool under its own autocast/precision
choice; the peers' data-loader workers match our reader threads); patches are matched by their level-0 corner. Printed: wall time of each
command (start-up included), patches/s, and for each peer ours/theirs per patch and in wall
time (goal ≥ 2×) with the largest probability difference on shared patches (goal ≤ 1e-3).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from calibrated_model import calibrated_classifier, classify_args
from large_slide import write_large_slide
from napari_mitosis.engine.tiled_inference import default_readers
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.checkpoint import ModelCard

ROOT = Path(__file__).resolve().parents[1]
WSINFER = ROOT / ".bench" / "peers" / "bin" / "python"
TIATOOLBOX = ROOT / ".bench" / "tiatoolbox" / "bin" / "python"

# WSInfer's CLI downloads its model-zoo registry at import; we pass a local model, so an
# empty registry stands in for it, so the benchmark runs offline.
OFFLINE_WSINFER = (
    "import sys, wsinfer_zoo.client as c; "
    "c.load_registry = lambda *a, **k: c.ModelRegistry(models={}); "
    "from wsinfer.cli.cli import cli; sys.argv[0] = 'wsinfer'; cli()"
)


class Logit(torch.nn.Module):
    """Our classifier as WSInfer's TorchScript model (WSInfer normalises and applies the
    sigmoid itself)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@dataclass
class Run:
    """One tool's run: wall seconds, level-0 (y, x) corner and tumour probability per patch."""

    name: str
    torch: str
    seconds: float
    corners: np.ndarray
    probability: np.ndarray

    @property
    def rate(self) -> float:
        return len(self.corners) / self.seconds


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{command[0]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def torch_version(python: Path) -> str:
    command = [
        str(python),
        "-c",
        "import importlib.metadata as m; print(m.version('torch'))",
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


def run_wsinfer(work: Path, card: ModelCard, args: argparse.Namespace, speedup: bool) -> Run:
    config = {
        "spec_version": "1.0",
        "architecture": args.architecture,
        "num_classes": 1,
        "class_names": ["tumour"],
        "patch_size_pixels": args.patch,
        "spacing_um_px": card.mpp,
        "transform": [
            {"name": "Resize", "arguments": {"size": args.patch}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": {"mean": list(card.mean), "std": list(card.std)}},
        ],
    }
    (work / "config.json").write_text(json.dumps(config))
    results = work / ("wsinfer-speedup" if speedup else "wsinfer")
    seconds = timed(
        [
            str(args.wsinfer_python),
            "-c",
            OFFLINE_WSINFER,
            "--backend",
            "openslide",
            "run",
            "--wsi-dir",
            str(work / "slides"),
            "--results-dir",
            str(results),
            "--model-path",
            str(work / "model.pt"),
            "--config",
            str(work / "config.json"),
            "--batch-size",
            str(args.batch),
            "--num-workers",
            str(args.workers),
            "--speedup" if speedup else "--no-speedup",
        ]
    )
    with (results / "model-outputs-csv" / "slide.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    corners = np.array([(float(r["miny"]), float(r["minx"])) for r in rows])
    probability = np.array([float(r["prob_tumour"]) for r in rows])
    name = "WSInfer 0.6.1" + (" --speedup" if speedup else "")
    return Run(name, torch_version(args.wsinfer_python), seconds, corners, probability)


def run_tiatoolbox(work: Path, checkpoint: Path, slide: Path, args: argparse.Namespace) -> Run:
    out = work / "tiatoolbox"
    seconds = timed(
        [
            str(args.tiatoolbox_python),
            str(Path(__file__).with_name("tiatoolbox_patch_predictor.py")),
            str(slide),
            str(checkpoint),
            str(out),
            f"--patch={args.patch}",
            f"--batch={args.batch}",
            f"--workers={args.workers}",
            f"--device={args.device}",
        ]
    )
    patches = np.load(out / "patches.npz")
    corners = patches["coordinates"][:, [1, 0]].astype(float)  # (x0, y0, …) → (y, x)
    return Run(
        "TIAToolbox 2.1.3",
        torch_version(args.tiatoolbox_python),
        seconds,
        corners,
        patches["probability"],
    )


def run_ours(
    work: Path,
    checkpoint: Path,
    slide: Path,
    args: argparse.Namespace,
    python: Path,
    amp: bool = True,
) -> Run:
    out = work / f"ours-{len(list(work.glob('ours-*')))}"
    seconds = timed(
        [
            str(python),
            *classify_args(
                slide, checkpoint, out, patch=args.patch, batch=args.batch, device=args.device
            ),
            *([] if amp else ["--no-amp"]),
        ]
    )
    with open_slide(out / "slide.tumour_probability.tif") as heat:
        heatmap = np.asarray(heat.levels[0])
    cells = np.argwhere(heatmap > 0)  # cells sent to the model (probabilities are > 0)
    return Run(
        "napari-mitosis" + ("" if amp or args.device == "cpu" else " float32"),
        torch_version(python),
        seconds,
        cells.astype(float) * args.patch,
        heatmap[heatmap > 0],
    )


def compare(ours: Run, theirs: Run, patch: int) -> str:
    """Per-patch and wall-time speed-up, and the probability difference on shared patches."""
    mine = dict(
        zip(map(tuple, (ours.corners // patch).astype(int).tolist()), ours.probability, strict=True)
    )
    keys = map(tuple, (theirs.corners // patch).astype(int).tolist())
    shared = [(mine[k], p) for k, p in zip(keys, theirs.probability, strict=True) if k in mine]
    diff = max((abs(a - b) for a, b in shared), default=float("nan"))
    return (
        f"  vs {theirs.name:24s} per patch {ours.rate / theirs.rate:4.2f}×, wall "
        f"{theirs.seconds / ours.seconds:4.2f}× (goal ≥ 2×); {len(shared)} shared patches, "
        f"max |Δp| {diff:.1e}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--size", type=int, default=6144)
    parser.add_argument(
        "--copies", type=int, default=1, help="slide of copies × copies synthetic fields"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--workers",
        type=int,
        help="peers' data-loader workers (default: as many as our reader threads, but ≥ 2)",
    )
    parser.add_argument("--wsinfer-python", type=Path, default=WSINFER)
    parser.add_argument("--tiatoolbox-python", type=Path, default=TIATOOLBOX)
    args = parser.parse_args()
    if args.workers is None:
        args.workers = max(2, default_readers(args.device, args.patch))
    have_wsinfer = args.wsinfer_python.exists()
    have_tiatoolbox = args.tiatoolbox_python.exists()
    if not (have_wsinfer or have_tiatoolbox):
        print("no peer is installed here: run `make bench-peers`")
        return 1
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "slides").mkdir()
        slide = work / "slides" / "slide.tif"
        write_large_slide(slide, args.size, args.copies)
        card, model, checkpoint = calibrated_classifier(work, slide, args.architecture, args.patch)
        example = torch.zeros(1, 3, args.patch, args.patch)
        torch.jit.trace(Logit(model), example).save(str(work / "model.pt"))  # eval mode: tensor out

        # On CUDA ours runs twice: under float16 autocast (its default) and in float32,
        # as the peers run — the second shows the heatmaps are the same.
        precisions = (True, False) if args.device == "cuda" else (True,)
        pairs: list[tuple[list[Run], list[Run]]] = []
        if have_wsinfer:
            peers = [run_wsinfer(work, card, args, speedup) for speedup in (False, True)]
            python = Path(sys.executable)
            ours = [run_ours(work, checkpoint, slide, args, python, amp) for amp in precisions]
            pairs.append((ours, peers))
        if have_tiatoolbox:
            peers = [run_tiatoolbox(work, checkpoint, slide, args)]
            python = args.tiatoolbox_python
            ours = [run_ours(work, checkpoint, slide, args, python, amp) for amp in precisions]
            pairs.append((ours, peers))

    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"{args.architecture}, {args.patch} px patches at 0.5 µm/px, "
        f"{args.size * args.copies}² px slide, "
        f"batch {args.batch}, {where}, peers' workers {args.workers}"
    )
    print(f"  {'tool':26s} {'torch':>8s} {'wall s':>7s} {'patches':>8s} {'/s':>7s}")
    for ours, peers in pairs:
        for run in (*peers, *ours):
            print(
                f"  {run.name:26s} {run.torch:>8s} {run.seconds:7.1f} "
                f"{len(run.corners):8d} {run.rate:7.1f}"
            )
    for ours, peers in pairs:
        for mine in ours:
            print(f"{mine.name} on torch {mine.torch}:")
            for peer in peers:
                print(compare(mine, peer, args.patch))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
