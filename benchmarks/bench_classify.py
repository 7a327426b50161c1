"""Whole-slide tumour classification vs the pure model on the same patches, in one process;
peak memory on small and large slides.

Goals: the engine (tissue mask, reading patches from the slide on a background thread,
batching, writing the heatmap) ≤ 1.10× the model's forward passes alone on the same
patches; peak RSS independent of slide size (each size runs in a fresh subprocess).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mitosis.classification.run import ClassificationRun, ClassifierPredictor, classify_slide
from napari_mitosis.engine.tissue import slide_tissue_mask
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint
from napari_mitosis.samples.synthetic import write_synthetic_slide

sys.path.insert(0, str(Path(__file__).parent))
from bench_reader import build_huge_sparse_slide
from calibrated_model import calibrate_batch_norm


def card_for(architecture: str, size: int, mpp: float) -> ModelCard:
    options = {"outputs": 1} if architecture != "small_cnn" else {"outputs": 1, "width": 32}
    return ModelCard(
        architecture,
        options,
        task="classification",
        input_size=size,
        mpp=mpp,
        classes=("normal", "tumour"),
    )


def speed(
    device: str, architecture: str, size: int, stride: int, batch: int, repeats: int, workdir: Path
) -> None:
    slide_path = workdir / "bench-classify.tif"
    if not slide_path.exists():
        write_synthetic_slide(slide_path, 4096, 4096, mpp=0.5, seed=5)
    torch.manual_seed(0)
    card = card_for(architecture, size, 0.5)
    model = calibrate_batch_norm(build_model(card), slide_path, card)  # no float16 overflow
    predictor = ClassifierPredictor(model, card, device)
    slide = open_slide(slide_path)
    level = slide.sources[0]
    tissue = slide_tissue_mask(slide)

    def tiled() -> ClassificationRun:
        run = ClassificationRun(level, predictor, stride=stride, batch_size=batch)
        started = time.perf_counter()
        run.restrict_to_tissue(slide_tissue_mask(slide), 0.3)
        times["tissue detection"].append(time.perf_counter() - started)
        run.run()
        return run

    probe = ClassificationRun(level, predictor, stride=stride, batch_size=batch)
    probe.restrict_to_tissue(tissue, 0.3)
    patches = np.stack([probe.read(int(y), int(x)) for y, x in probe.origins])
    predictor(patches[:batch])  # warm-up

    def pure() -> None:
        for start in range(0, len(patches), batch):
            predictor(patches[start : start + batch])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {"pure model": [], "whole slide": [], "tissue detection": []}
    for _ in range(repeats):  # interleaved so drift hits both alike
        for name, fn in (("pure model", pure), ("whole slide", tiled)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    best = {k: statistics.median(v) for k, v in times.items()}
    tissue_s = best.pop("tissue detection")
    print(
        f"\n{device}: {architecture} {size} px patches, stride {stride}, batch {batch}; "
        f"{len(patches)} of {len(probe.grid)} cells hold ≥ 30 % tissue (4096² px slide)"
    )
    for name, seconds in best.items():
        print(f"  {name:12s} {seconds:7.2f} s  {len(patches) / seconds:7.1f} patches/s")
    print(
        f"  ratio whole slide / pure model: {best['whole slide'] / best['pure model']:.3f}×"
        f"  (goal ≤ 1.10×); of the whole slide, tissue detection {tissue_s:.2f} s"
    )


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the parent's over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(slide: str, model: str) -> None:
    """Runs in a fresh process: classify a whole slide, print peak RSS (MiB) as JSON."""
    before = peak_rss_mib()
    started = time.perf_counter()
    result = classify_slide(slide, model, device="cpu", tissue_only=False, batch_size=32)
    print(
        json.dumps(
            {
                "cells": int(result.visited.sum()),
                "level": result.level,
                "seconds": time.perf_counter() - started,
                "rss_before": before,
                "rss_peak": peak_rss_mib(),
            }
        )
    )


def memory(workdir: Path) -> None:
    torch.manual_seed(0)
    card = card_for("small_cnn", 64, 4.0)  # runs on the level nearest 4 µm/px
    model = save_checkpoint(workdir / "small.safetensors", build_model(card), card)
    print("\npeak RSS, whole-slide heatmap (small CNN, 64 px patches at 4 µm/px, all cells):")
    for side in (12_500, 50_000):
        path = build_huge_sparse_slide(workdir / f"sparse-{side}.tif", side=side)
        out = (
            subprocess.run(
                [sys.executable, __file__, "--child", str(path), str(model)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        record = json.loads(out)
        print(
            f"  {side:>6} × {side} px slide: {record['cells']:>6} cells at level {record['level']} "
            f"in {record['seconds']:.1f} s; peak RSS {record['rss_peak']:.0f} MiB "
            f"(after imports {record['rss_before']:.0f} MiB)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--architecture",
        default="inception_v3",
        choices=("inception_v3", "wide_resnet", "small_cnn"),
    )
    parser.add_argument("--size", type=int, default=299)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("cpu", "cuda"),
        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
    )
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--speed-only", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        memory_child(*args.child)
        return 0
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"CUDA: {torch.cuda.is_available()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for device in [] if args.memory_only else args.devices:
            speed(
                device,
                args.architecture,
                args.size,
                args.stride,
                args.batch,
                args.repeats,
                Path(tmp),
            )
        if not args.speed_only:
            memory(Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
