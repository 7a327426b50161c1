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

``--wsinfer-model DIR`` compares a WSInfer-format model instead (a zoo folder; without
DIR, a random ResNet-18 traced to TorchScript, 224 px at twice the slide's µm/px, so
every patch is resized as 20× models are on 40× slides): both tools run the same folder
with WSInfer's patching, ours writing WSInfer's per-patch CSV (``--csv``); patches are
matched by their level-0 corner and every class's probability is compared. ``--slide``
runs on a real slide instead of the synthetic one.

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


def wsinfer_command(
    args: argparse.Namespace,
    slides: Path,
    results: Path,
    model: Path,
    config: Path,
    speedup: bool,
) -> list[str]:
    """``wsinfer run`` on a folder of slides with a local TorchScript model and config."""
    return [
        str(args.wsinfer_python),
        "-c",
        OFFLINE_WSINFER,
        "--backend",
        "openslide",
        "run",
        "--wsi-dir",
        str(slides),
        "--results-dir",
        str(results),
        "--model-path",
        str(model),
        "--config",
        str(config),
        "--batch-size",
        str(args.batch),
        "--num-workers",
        str(args.workers),
        "--speedup" if speedup else "--no-speedup",
    ]


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
        wsinfer_command(
            args, work / "slides", results, work / "model.pt", work / "config.json", speedup
        )
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


def zoo_model(work: Path, spacing: float, size: int = 224) -> Path:
    """A WSInfer model folder: an untrained ResNet-18 traced to TorchScript, ImageNet
    normalisation, two classes."""
    import torchvision

    folder = work / "zoo-model"
    folder.mkdir()
    model = torchvision.models.resnet18(num_classes=2).eval()
    torch.jit.trace(model, torch.zeros(1, 3, size, size)).save(str(folder / "torchscript_model.pt"))
    imagenet = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    config = {
        "spec_version": "1.0",
        "architecture": "resnet18",
        "num_classes": 2,
        "class_names": ["notumor", "tumor"],
        "patch_size_pixels": size,
        "spacing_um_px": spacing,
        "transform": [
            {"name": "Resize", "arguments": {"size": size}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": imagenet},
        ],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def patch_csv(path: Path) -> dict[tuple[int, int], np.ndarray]:
    """(minx, miny) → the patch's class probabilities, from a WSInfer-style CSV."""
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in rows[0] if c.startswith("prob_")] if rows else []
    return {
        (int(float(r["minx"])), int(float(r["miny"]))): np.array([float(r[c]) for c in columns])
        for r in rows
    }


def run_zoo(args: argparse.Namespace, work: Path, slide: Path) -> int:
    """The same WSInfer-format model through WSInfer and through us."""
    with open_slide(slide) as opened:
        mpp = float(np.mean(opened.mpp))
    model_dir = args.wsinfer_model or zoo_model(work, spacing=2 * mpp)
    config = json.loads((model_dir / "config.json").read_text())
    timings: list[tuple[str, float, dict[tuple[int, int], np.ndarray]]] = []
    for speedup in (False, True):
        results = work / ("zoo-wsinfer-speedup" if speedup else "zoo-wsinfer")
        model, config_file = model_dir / "torchscript_model.pt", model_dir / "config.json"
        seconds = timed(wsinfer_command(args, slide.parent, results, model, config_file, speedup))
        table = patch_csv(results / "model-outputs-csv" / f"{slide.stem}.csv")
        timings.append(("WSInfer 0.6.1" + (" --speedup" if speedup else ""), seconds, table))
    out = work / "zoo-ours"
    seconds = timed(
        [
            sys.executable,
            "-m",
            "napari_mitosis",
            "classify",
            str(slide),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--csv",
            "--min-tissue",
            "0.01",
            "--batch-size",
            str(args.batch),
            "--device",
            args.device,
        ]
    )
    ours = patch_csv(out / f"{slide.stem}.patches.csv")
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"WSInfer-format model {model_dir.name}: {config['architecture']}, "
        f"{config['patch_size_pixels']} px at {config['spacing_um_px']:g} µm/px on "
        f"{slide.name} ({mpp:.3f} µm/px), batch {args.batch}, {where}"
    )
    print(f"  {'tool':26s} {'wall s':>7s} {'patches':>8s} {'/s':>7s}")
    for name, wall, table in [*timings, ("napari-mitosis", seconds, ours)]:
        print(f"  {name:26s} {wall:7.1f} {len(table):8d} {len(table) / wall:7.1f}")
    for name, wall, table in timings:
        shared = sorted(set(table) & set(ours))
        diff = max((float(np.abs(table[k] - ours[k]).max()) for k in shared), default=float("nan"))
        rate = (len(ours) / seconds) / (len(table) / wall)
        print(
            f"  ours vs {name:24s} per patch {rate:4.2f}×, wall {wall / seconds:4.2f}× "
            f"(goal ≥ 2×); {len(shared)} shared patches, max |Δp| {diff:.1e} (goal ≤ 1e-4)"
        )
    return 0


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
    parser.add_argument(
        "--wsinfer-model",
        type=Path,
        nargs="?",
        const=False,
        default=None,
        help="compare a WSInfer-format model folder (no folder: a random ResNet-18 one)",
    )
    parser.add_argument("--slide", type=Path, help="a real slide instead of the synthetic one")
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
        if args.slide is not None:  # WSInfer reads a folder of slides: this one alone
            slide = work / "slides" / args.slide.name
            slide.symlink_to(args.slide.resolve())
        else:
            write_large_slide(slide, args.size, args.copies)
        if args.wsinfer_model is not None:
            if not have_wsinfer:
                print("WSInfer is not installed here: run `make bench-peers`")
                return 1
            args.wsinfer_model = args.wsinfer_model or None
            return run_zoo(args, work, slide)
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
