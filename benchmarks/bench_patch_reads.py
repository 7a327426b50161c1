"""Patch reads per second as reader threads grow: raw OpenSlide ``read_region`` (the
baseline, same process, row-major) vs our patch reader, and the tiled loop with a model
that costs nothing — the ceiling of a whole-slide run on a GPU, whose forward pass is far
faster — row-major and in reading strips (`strip_order`, what classification runs use).

    python benchmarks/bench_patch_reads.py [--size 8192] [--copies 1] [--patch 96]
        [--threads 1 2 4 8]

``--copies 5`` repeats the field 5 × 5 times: a 40,960 px wide slide, as wide as a real
one, whose tile rows no longer fit OpenSlide's tile cache.
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

from large_slide import write_large_slide
from napari_mitosis.classification.patches import PatchReader
from napari_mitosis.engine.tiled_inference import iter_tiled
from napari_mitosis.engine.tiling import TileGrid, strip_order
from napari_mitosis.io.formats import open_slide


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
    parser.add_argument("--copies", type=int, default=1)
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=sorted({1, 2, min(8, os.cpu_count() or 1)})
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "reads.tif"
        write_large_slide(path, args.size, args.copies)
        slide = open_slide(path)
        level = slide.sources[0]
        grid = TileGrid.over(level.shape, args.patch, 0, uniform=True)
        origins = grid.origins()
        reader = PatchReader(level, patch=args.patch, cell=args.patch)
        raw = openslide.OpenSlide(str(path))
        size = (args.patch, args.patch)

        def read_raw(yx: np.ndarray) -> np.ndarray:
            return np.asarray(raw.read_region((int(yx[1]), int(yx[0])), 0, size))

        print(
            f"{len(origins)} patches of {args.patch} px from a {args.size * args.copies}² px "
            f"slide, {os.cpu_count()} CPU cores; patches/s (ratio ours/raw)"
        )
        print(
            f"  {'threads':>7s} {'raw OpenSlide':>14s} {'our reader':>15s} {'tiled loop':>15s} "
            f"{'loop in strips':>15s}"
        )
        for threads in args.threads:
            with ThreadPoolExecutor(threads) as pool:
                baseline = rate(len(origins), lambda: list(pool.map(read_raw, origins)))
                ours = rate(
                    len(origins), lambda: list(pool.map(lambda yx: reader(*map(int, yx)), origins))
                )
            loops = []
            for order in (origins, strip_order(origins, args.patch)):
                steps = iter_tiled(
                    grid,
                    level,
                    lambda t: np.zeros(len(t)),
                    Discard(),
                    origins=order,
                    batch_size=args.batch,
                    read=reader,
                    readers=threads,
                )
                loops.append(rate(len(origins), lambda: list(steps)))  # noqa: B023 - at once
            cells = " ".join(f"{r:7.0f} ({r / baseline:4.2f}×)" for r in (ours, *loops))
            print(f"  {threads:7d} {baseline:14.0f} {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
