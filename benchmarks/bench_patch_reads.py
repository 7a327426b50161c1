"""Patch reads per second as reader threads grow: raw OpenSlide ``read_region`` (the
baseline, same process) vs our patch reader, and the tiled loop with a model that costs
nothing — the ceiling of a whole-slide run on a GPU, whose forward pass is far faster.

    python benchmarks/bench_patch_reads.py [--size 8192] [--patch 96] [--threads 1 2 4 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide

from napari_mitosis.classification import PatchReader
from napari_mitosis.slide import open_slide
from napari_mitosis.synthetic import write_synthetic_slide
from napari_mitosis.tiled_inference import iter_tiled
from napari_mitosis.tiling import TileGrid


class Discard:
    def add(self, origins: np.ndarray, outputs: np.ndarray) -> None:
        pass


def rate(count: int, run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, 2, min(8, os.cpu_count() or 1)})
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reads.tif"
        write_synthetic_slide(path, args.size, args.size, mpp=0.5, seed=7)
        slide = open_slide(path)
        level = slide.viewer_levels[0]
        grid = TileGrid.over(level.shape, args.patch, 0, uniform=True)
        origins = grid.origins()
        reader = PatchReader(level, patch=args.patch, cell=args.patch)
        raw = openslide.OpenSlide(str(path))
        size = (args.patch, args.patch)

        def read_raw(yx: np.ndarray) -> np.ndarray:
            return np.asarray(raw.read_region((int(yx[1]), int(yx[0])), 0, size))

        print(
            f"{len(origins)} patches of {args.patch} px from a {args.size}² px slide, "
            f"{os.cpu_count()} CPU cores; patches/s (ratio ours/raw)"
        )
        print(f"  {'threads':>7s} {'raw OpenSlide':>14s} {'our reader':>11s} {'tiled loop':>11s}")
        for threads in args.threads:
            with ThreadPoolExecutor(threads) as pool:
                baseline = rate(len(origins), lambda: list(pool.map(read_raw, origins)))
                ours = rate(
                    len(origins), lambda: list(pool.map(lambda yx: reader(*map(int, yx)), origins))
                )
            steps = iter_tiled(
                grid,
                level,
                lambda t: np.zeros(len(t)),
                Discard(),
                batch_size=args.batch,
                read=reader,
                readers=threads,
            )
            loop = rate(len(origins), lambda: list(steps))  # noqa: B023 - called at once
            print(
                f"  {threads:7d} {baseline:14.0f} {ours:7.0f} ({ours / baseline:4.2f}×) "
                f"{loop:7.0f} ({loop / baseline:4.2f}×)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
