"""Tiled U-Net inference vs the pure model on the same tiles, in one process.

Goal: whole tiled segmentation (reading tiles from a slide, batching, blending, writing the
probability map, labelling) ≤ 1.10× the time of the model forward passes alone.
Prints megapixels/s on the CPU (and CUDA when present).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from napari_mitosis.engine.tiled_inference import TilePredictor
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.checkpoint import ModelCard
from napari_mitosis.models.unet import unet
from napari_mitosis.samples.synthetic import write_synthetic_slide
from napari_mitosis.segmentation.run import segment_array


def bench(
    device: str, size: int, tile: int, overlap: int, batch: int, repeats: int, workdir: Path
) -> None:
    slide_path = workdir / f"bench-seg-{size}.tif"
    if not slide_path.exists():
        write_synthetic_slide(slide_path, size, size, seed=2)
    level = open_slide(slide_path).sources[0]
    torch.manual_seed(0)
    card = ModelCard("unet", {}, input_size=tile)  # the default 7.8 M-parameter U-Net
    predictor = TilePredictor(unet(), card, device)
    grid = TileGrid.over(level.shape, tile, overlap)
    tiles = np.stack([grid.read(level, int(y), int(x)) for y, x in grid.origins()])
    predictor(tiles[:batch])  # warm-up: kernels, allocator

    def pure() -> None:
        for start in range(0, len(tiles), batch):
            predictor(tiles[start : start + batch])
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()

    def tiled() -> None:
        segment_array(level, predictor, tile=tile, overlap=overlap, batch_size=batch)

    times: dict[str, list[float]] = {"pure model": [], "tiled engine": []}
    for _ in range(repeats):  # interleaved so drift hits both alike
        for name, fn in (("pure model", pure), ("tiled engine", tiled)):
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    best = {k: statistics.median(v) for k, v in times.items()}
    megapixels = size * size / 1e6
    print(
        f"\n{device}: {size} × {size} px slide, {len(grid)} tiles of {tile} px (overlap {overlap}), batch {batch}"
    )
    for name, seconds in best.items():
        print(
            f"  {name:13s} {seconds:7.2f} s  {megapixels / seconds:6.2f} Mpx/s  {len(grid) / seconds:6.1f} tiles/s"
        )
    print(
        f"  ratio tiled / pure model: {best['tiled engine'] / best['pure model']:.3f}×  (goal ≤ 1.10×)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1536)
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
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
        for device in args.devices:
            size = args.size if device == "cpu" else args.size * 4
            bench(device, size, args.tile, args.overlap, args.batch, args.repeats, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
