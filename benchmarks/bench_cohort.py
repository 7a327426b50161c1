"""Cohort runner cost: slides/hour with 1 vs 2 local Dask workers, and the runner's
per-slide overhead against calling the single-slide API in this process.

The same slides and models go through (a) `analyse_slide` + `write_analysis` in a loop
here, with torch using all cores, (b) `run_cohort` on one worker process (all cores),
(c) `run_cohort` on two worker processes (cores shared). Models are tiny demo models
(accuracy is not measured here); pass --models for your own.

    python benchmarks/bench_cohort.py [--slides 8] [--size 2048]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=8)
    parser.add_argument("--size", type=int, default=2048, help="slide side in px (0.25 µm/px)")
    parser.add_argument("--models", nargs="*", type=Path, default=())
    args = parser.parse_args()

    import torch

    from napari_mitosis.cohort.config import settings_from_checkpoints
    from napari_mitosis.cohort.pipeline import PipelineModels, analyse_slide, write_analysis
    from napari_mitosis.cohort.runner import run_cohort
    from napari_mitosis.demo.models import demo_classifier, demo_detector
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    work = Path(tempfile.mkdtemp(prefix="bench-cohort-"))
    models = list(args.models) or [
        demo_classifier(work / "classifier.safetensors", device="cpu", log=False),
        demo_detector(work / "detector.safetensors", device="cpu", steps=20, log=False),
    ]
    settings = settings_from_checkpoints(models, device="cpu", detect_tile=256)
    slides = []
    for seed in range(args.slides):
        path = work / "slides" / f"slide{seed}.tif"
        path.parent.mkdir(exist_ok=True)
        write_synthetic_slide(path, args.size, args.size, seed=seed)
        slides.append(path)
    cores = os.cpu_count() or 1
    print(
        f"{args.slides} slides of {args.size}² px, {cores} cores, models: {[m.name for m in models]}"
    )

    torch.set_num_threads(cores)
    started = time.perf_counter()
    loaded = PipelineModels.load(settings)
    direct_out = work / "direct"
    for path in slides:
        analysis = analyse_slide(path, loaded, settings)
        write_analysis(analysis, direct_out / path.stem, path.stem, settings)
    direct = time.perf_counter() - started

    walls, inside = {}, {}
    for workers in (1, 2):
        started = time.perf_counter()
        report = run_cohort(slides, settings, work / f"cohort{workers}", workers=workers)
        walls[workers] = time.perf_counter() - started
        inside[workers] = sum(float(r["runtime_s"]) for r in report.rows)
        assert not report.failed, report.failed

    per_slide = direct / args.slides
    print(
        f"single-slide API in this process: {per_slide:.2f} s/slide ({3600 / per_slide:.0f} slides/h)"
    )
    for workers in (1, 2):
        rate = args.slides / walls[workers] * 3600
        print(
            f"cohort, {workers} worker(s): {walls[workers]:.1f} s wall, {rate:.0f} slides/h "
            f"(incl. cluster start and model loading)"
        )
    print(f"2 vs 1 workers: {walls[1] / walls[2]:.2f}× slides/hour")
    overhead_wall = walls[1] / direct - 1
    overhead_slide = inside[1] / direct - 1
    print(
        f"cohort overhead vs the single-slide API (1 worker, same cores): "
        f"{overhead_wall:+.1%} wall incl. start-up, {overhead_slide:+.1%} per slide on the worker "
        f"(goal ≤ +5%)"
    )


if __name__ == "__main__":
    main()
