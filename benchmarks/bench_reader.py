"""Reader speed and memory: our lazy levels vs raw OpenSlide vs napari-wsi, same tiles, one process.

Run with ``make bench`` (it installs napari-wsi into a benchmark-only environment, .bench/venv).
Prints, for reads through the napari layer (a Dask array per level): the ratio to the
direct source reads the engine makes (goal ≥ 0.9×), to raw OpenSlide (goal ≥ 2×) and to
napari-wsi (goal ≥ 1×); the cost of a Dask ``compute`` of the same slice; open times on a
50k × 50k synthetic pyramid (goal < 0.2 s) and peak memory while reading thousands of tiles.
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import dask.array as da
import numpy as np
import openslide
import tifffile

from napari_mitosis import open_slide
from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
from napari_mitosis.samples.synthetic import synthetic_slide

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
Reader = Callable[[int, int, int, int], np.ndarray]  # (x, y, w, h) at one level → pixels


def build_textured_slide(path: Path, side: int = 16384) -> Path:
    """A 16k × 16k JPEG pyramid of synthetic H&E (the sample tiled), built once."""
    if path.exists():
        return path

    rgb, _ = synthetic_slide(2048, 2048, seed=11)
    reps = side // 2048
    lazy = da.tile(da.from_array(rgb, chunks=(256, 256, 3)), (reps, reps, 1))
    print(f"building {path} ({side} × {side}) …", flush=True)
    write_pyramid_tiff(path, lazy, mpp=(0.25, 0.25), compression="jpeg")
    return path


def build_huge_sparse_slide(path: Path, side: int = 50_000, tile: int = 256) -> Path:
    """A 50k × 50k pyramid whose tiles are one pre-compressed block (fast to build, real layout)."""
    if path.exists():
        return path
    block = np.full((tile, tile, 3), (230, 160, 200), np.uint8)
    block[::16] = (110, 70, 160)
    encoded = zlib.compress(block.tobytes(), 6)
    print(f"building {path} ({side} × {side}) …", flush=True)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        size, index = side, 0
        while True:
            n = (-(-size // tile)) ** 2
            res = 1e4 / (0.25 * side / size)
            tif.write(
                iter([encoded] * n),
                shape=(size, size, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                compression="zlib",
                photometric="rgb",
                subfiletype=1 if index else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
            )
            if size <= tile:
                break
            size, index = size // 2, index + 1
    return path


def raw_reader(path: Path, level: int) -> Reader:
    slide = openslide.OpenSlide(str(path))
    down = slide.level_downsamples[level]

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return np.asarray(slide.read_region((round(x * down), round(y * down)), level, (w, h)))

    return read


def our_layer_reader(path: Path, level: int) -> Reader:
    """What napari reads: the layer's Dask level, sliced and turned into NumPy."""
    data = open_slide(path).levels[level]
    assert isinstance(data, da.Array)

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return np.asarray(data[y : y + h, x : x + w])

    return read


def our_source_reader(path: Path, level: int) -> Reader:
    """What the tiled engine reads: the level's direct source, no Dask at all."""
    data = open_slide(path).sources[level]

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return np.asarray(data[y : y + h, x : x + w])

    return read


def our_dask_reader(path: Path, level: int) -> Reader:
    """A script's ``compute()`` of the same slice: Dask's graph and scheduler."""
    data = open_slide(path).levels[level]

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return data[y : y + h, x : x + w].compute()

    return read


def wsi_reader(path: Path, level: int) -> Reader | None:
    try:
        from napari_wsi.backends.openslide import OpenSlideStore
    except ImportError:
        return None
    data = OpenSlideStore(path).to_layer_data_tuples()[0][0][level]

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return np.asarray(data[y : y + h, x : x + w])

    return read


def positions(shape: tuple[int, int], size: int, count: int, seed: int) -> list[tuple[int, int]]:
    """Distinct tile-aligned (x, y) positions, so no method profits from a tile cache."""
    rows, cols = shape[0] // size, shape[1] // size
    rng = np.random.default_rng(seed)
    picks = rng.choice(rows * cols, size=min(count, rows * cols), replace=False)
    return [(int(p % cols) * size, int(p // cols) * size) for p in picks]


def compare(path: Path, level: int, size: int, count: int, rounds: int) -> None:
    shape = open_slide(path).levels[level].shape[:2]
    where = positions(shape, size, count, seed=level * 7 + size)
    makers = {
        "raw OpenSlide": raw_reader,
        "napari-mitosis": our_layer_reader,
        "direct source": our_source_reader,
        "Dask compute": our_dask_reader,
        "napari-wsi": wsi_reader,
    }
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(rounds):  # interleaved rounds, fresh handles: no method inherits a warm cache
        for name, make in makers.items():
            reader = make(path, level)
            if reader is None:
                continue
            reader(*where[0], size, size)  # first call pays one-off set-up, not tile reads
            started = time.perf_counter()
            for x, y in where[1:]:
                reader(x, y, size, size)
            times[name].append(time.perf_counter() - started)
            del reader
            gc.collect()
    best = {name: statistics.median(t) for name, t in times.items() if t}
    rate = {name: (len(where) - 1) / t for name, t in best.items()}
    print(f"\n{path.name} level {level}: {len(where) - 1} reads of {size}×{size} px")
    for name, r in rate.items():
        print(f"  {name:15s} {r:8.1f} reads/s  ({1e3 / r:.2f} ms each)")
    ours = rate["napari-mitosis"]
    print(
        f"  ratio napari layer / direct source: {ours / rate['direct source']:.2f}×  (goal ≥ 0.9×)"
    )
    print(f"  ratio napari layer / raw OpenSlide: {ours / rate['raw OpenSlide']:.2f}×  (goal ≥ 2×)")
    if "napari-wsi" in rate:
        print(
            f"  ratio napari layer / napari-wsi:    {ours / rate['napari-wsi']:.2f}×  (goal ≥ 1×)"
        )
        dask_ratio = rate["Dask compute"] / rate["napari-wsi"]
        print(f"  ratio Dask compute / napari-wsi:    {dask_ratio:.2f}×")
    else:
        print("  napari-wsi not installed (make bench installs it into .bench/venv)")


def open_times(path: Path, repeats: int = 7) -> None:
    def timed(fn: Callable[[], object]) -> float:
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    side = openslide.OpenSlide(str(path)).dimensions[0]
    print(
        f"\nopen time, {side} × {side} px pyramid ({path.stat().st_size / 2**20:.0f} MiB on disk):"
    )
    ours = timed(lambda: open_slide(path))
    print(f"  napari-mitosis open_slide: {ours * 1e3:7.1f} ms  (goal < 200 ms)")
    raw = timed(lambda: openslide.OpenSlide(str(path)))
    print(f"  raw OpenSlide():           {raw * 1e3:7.1f} ms")
    try:
        from napari_wsi.backends.openslide import OpenSlideStore

        wsi = timed(lambda: OpenSlideStore(path).to_layer_data_tuples())
        print(f"  napari-wsi store + layer:  {wsi * 1e3:7.1f} ms")
    except ImportError:
        pass


def peak_memory(path: Path, count: int) -> None:
    """Read many distinct tiles through the layer; peak RSS must not grow with slide size."""
    slide = open_slide(path)
    level = slide.levels[0]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    where = positions(level.shape[:2], 256, count, seed=5)
    for x, y in where:
        np.asarray(level[y : y + 256, x : x + 256])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    decoded = len(where) * 256 * 256 * 3 / 2**20
    level_gib = level.nbytes / 2**30
    print(
        f"\npeak RSS reading {len(where)} tiles ({decoded:.0f} MiB decoded) of a "
        f"{level_gib:.1f} GiB level: {before:.0f} → {after:.0f} MiB (+{after - before:.0f} MiB)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reads", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench")
    args = parser.parse_args()
    args.workdir.mkdir(exist_ok=True)
    textured = build_textured_slide(args.workdir / "textured-16k.tif")
    huge = build_huge_sparse_slide(args.workdir / "flat-50k.tif")
    print(f"python {sys.version.split()[0]}, OpenSlide {openslide.__library_version__}")
    open_times(huge)
    if CMU.exists():
        compare(CMU, 0, 240, min(args.reads, 100), args.rounds)  # the real slide has 117 tiles
    compare(textured, 0, 256, args.reads, args.rounds)
    compare(textured, 1, 256, args.reads, args.rounds)
    compare(textured, 0, 1024, args.reads // 8, args.rounds)  # a viewport: 16 tiles at once
    compare(huge, 0, 256, args.reads // 4, args.rounds)  # 38k chunks: where graphs cost most
    peak_memory(huge, 3000)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
