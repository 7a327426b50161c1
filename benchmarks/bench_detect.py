"""Slide-scale detection vs the pure model on the same tiles, per backbone, in one process.

Goal: tiled detection (reading tiles from a slide in the background, batching, merging
across borders with batched_nms) ≤ 1.10× the model's own time on the same tiles.
Untrained weights: the timing of Faster R-CNN barely depends on them, except through the
number of proposals, which is capped by torchvision's defaults either way.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mitosis.detection.run import DetectionRun
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.checkpoint import ModelCard
from napari_mitosis.models.detector import DetectionPredictor, faster_rcnn
from napari_mitosis.samples.synthetic import write_synthetic_slide


def bench(
    backbone: str, device: str, level: object, tile: int, overlap: int, batch: int, repeats: int
) -> None:
    torch.manual_seed(0)
    card = ModelCard(
        "faster_rcnn", {"backbone": backbone, "tile": tile}, task="detection", input_size=tile
    )
    predictor = DetectionPredictor(faster_rcnn(backbone=backbone, tile=tile), card, device)
    grid = TileGrid.over(level.shape, tile, overlap)
    tiles = np.stack([grid.read(level, int(y), int(x)) for y, x in grid.origins()])
    predictor(tiles[:batch])  # warm-up

    def pure() -> None:
        for start in range(0, len(tiles), batch):
            predictor(tiles[start : start + batch])

    def tiled() -> None:
        run = DetectionRun(level, predictor, overlap=overlap, batch_size=batch)
        run.run()
        run.result(0.0)

    times: dict[str, list[float]] = {"pure model": [], "tiled engine": []}
    for _ in range(repeats):
        for name, fn in (("pure model", pure), ("tiled engine", tiled)):
            started = time.perf_counter()
            fn()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - started)
    best = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"\n{backbone} on {device}: {len(grid)} tiles of {tile} px (overlap {overlap}), batch {batch}"
    )
    for name, seconds in best.items():
        print(f"  {name:13s} {seconds:7.2f} s  {len(grid) / seconds:6.2f} tiles/s")
    print(
        f"  ratio tiled / pure model: {best['tiled engine'] / best['pure model']:.3f}×  (goal ≤ 1.10×)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1280)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    # ResNet-50-FPN is the GPU backbone: on a 2-core CPU one run of it takes many minutes.
    parser.add_argument("--backbones", nargs="+", default=["mobilenet_v3"])
    parser.add_argument(
        "--devices",
        nargs="+",
        choices=("cpu", "cuda"),
        default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []),
    )
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA: {torch.cuda.is_available()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench-detect.tif"
        write_synthetic_slide(path, args.size, args.size, seed=5)
        level = open_slide(path).sources[0]
        for device in args.devices:
            for backbone in args.backbones:
                bench(backbone, device, level, args.tile, args.overlap, args.batch, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
