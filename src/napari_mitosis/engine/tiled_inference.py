"""The one tiled-inference loop: read tiles in the background, batch them, run a model,
hand each batch to a merger. Models differ only in their merger (blended probability map
for the U-Net; boxes for detectors; one score per tile for classifiers).
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.models.checkpoint import ModelCard
from napari_mitosis.models.inference_model import (
    channels_last,
    forward_amp,
    predicting_model,
)
from napari_mitosis.models.stain import card_normaliser

if TYPE_CHECKING:
    from napari_mitosis.engine.tissue import TissueMask

Progress = Callable[[int, int], None]


class Cancelled(Exception):
    """The caller asked the run to stop; nothing half-done was handed back."""


class Merger(Protocol):
    def add(self, origins: np.ndarray, outputs: np.ndarray) -> None: ...


class TilePredictor:
    """uint8 (N, H, W, C) tiles → model outputs as NumPy, with the card's normalisation.

    On CUDA it runs under float16 autocast unless ``amp=False`` (`forward_amp`), on the
    CPU in float32, so results agree within AMP tolerance. ``optimise`` runs a
    `for_inference` copy of the model (batch norm folded, channels-last); pass False to
    predict with a model that is still training.
    """

    def __init__(
        self,
        model: nn.Module,
        card: ModelCard,
        device: str | torch.device = "auto",
        activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid,
        *,
        optimise: bool = True,
        amp: bool = True,
    ) -> None:
        self.device, self.model = predicting_model(model, device, optimise=optimise)
        self.card = card
        self.activation = activation
        self.amp = amp and self.device.type == "cuda"
        self.mean = torch.tensor(card.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(card.std, device=self.device).view(1, -1, 1, 1)
        self.normalise = card_normaliser(card)

    @torch.inference_mode()
    def __call__(self, tiles: np.ndarray | torch.Tensor) -> np.ndarray:
        """Outputs for (n, h, w[, c]) uint8 tiles, or (n, c, h, w) uint8 tensors already
        on the device (`engine.device_tiles`)."""
        if isinstance(tiles, torch.Tensor):
            batch = tiles.to(self.device).float().div_(255.0)
        else:
            if self.normalise is not None:
                tiles = self.normalise(tiles)
            batch = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device, non_blocking=True)
            if batch.ndim == 3:  # greyscale tiles
                batch = batch[..., None]
            batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        batch = batch.sub_(self.mean).div_(self.std)
        out = self.activation(forward_amp(self.model, channels_last(batch), self.amp))
        return out.cpu().numpy()


TileReader = Callable[[int, int], np.ndarray]


def default_readers(device: torch.device | str = "cpu", tile: int = 256) -> int:
    """Tile-reading threads for a model on ``device`` reading ``tile`` px tiles: one beside a
    CPU model (the model needs the cores); beside a GPU, whose forward pass outruns one
    reader many times, 4 for small patches and 8 for larger tiles (at most cores − 1).

    Each read decodes in C without the GIL, then copies under it; threads help until they
    queue for the GIL, which small patches reach sooner. Measured on a 16-core H100 box
    (benchmarks/bench_patch_reads.py, tiled loop): 96 px patches/s 6.6k, 6.2k, 6.8k with 1,
    4, 8 threads; 299 px 1.1k, 2.1k, 2.5k, 1.9k with 1, 4, 8, 15 (in reading strips).
    """
    if torch.device(device).type == "cpu":
        return 1
    wanted = 4 if tile < 192 else 8
    return max(1, min(wanted, (os.cpu_count() or 1) - 1))


def iter_tiled(
    grid: TileGrid,
    source: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    merger: Merger,
    *,
    origins: np.ndarray | None = None,
    batch_size: int = 8,
    read: TileReader | None = None,
    readers: int = 1,
    read_batch: Callable[[np.ndarray], Any] | None = None,
) -> Iterator[tuple[int, int]]:
    """Run ``predict`` over the grid (or the given ``origins``, e.g. tissue tiles only),
    yielding ``(tiles done, total)`` after each batch.

    ``read(y, x)`` gives the model input for the tile at that origin (default: the tile
    itself; classifiers read a larger patch, or a patch and its context, around it);
    ``read_batch(origins)`` instead gives a whole batch at once (patches decoded and cut on
    the model's device: `engine.device_tiles`).

    ``readers`` threads read the next batches while the model works on this one, each
    thread a whole batch (``readers`` + 1 batches ahead, merged in order). A batch per
    thread rather than a tile per thread: neighbouring patches share slide tiles, and threads
    reading them at once queue for the same decodes — on a 2-core CPU two threads read
    299 px patches 1.2–1.4× and 96 px patches 1.5–1.9× faster this way. A generator, so a napari ``thread_worker`` can report
    progress and stop between batches; closing it drops the batches not started.
    """
    origins = grid.origins() if origins is None else origins
    total = len(origins)
    if read is None:
        read = lambda y, x: grid.read(source, y, x)  # noqa: E731 - the default reader
    starts = iter(range(0, total, batch_size))
    ahead: deque[tuple[np.ndarray, Future[np.ndarray]]] = deque()
    pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="tile-reader")

    def stacked(chunk: np.ndarray) -> np.ndarray:
        return np.stack([read(int(y), int(x)) for y, x in chunk])

    read_chunk = read_batch or stacked

    def read_ahead() -> None:
        start = next(starts, None)
        if start is not None:
            chunk = origins[start : start + batch_size]
            ahead.append((chunk, pool.submit(read_chunk, chunk)))

    try:
        for _ in range(max(1, readers) + 1):
            read_ahead()
        done = 0
        while ahead:
            chunk, tiles = ahead.popleft()
            read_ahead()
            merger.add(chunk, predict(tiles.result()))
            done += len(chunk)
            yield done, total
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_tiled(
    grid: TileGrid,
    source: Any,
    predict: Callable[[np.ndarray], np.ndarray],
    merger: Merger,
    *,
    origins: np.ndarray | None = None,
    batch_size: int = 8,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """`iter_tiled` to the end; ``should_stop()`` between batches raises :class:`Cancelled`."""
    steps = iter_tiled(grid, source, predict, merger, origins=origins, batch_size=batch_size)
    drive(steps, progress, should_stop)


def drive(
    steps: Iterator[tuple[int, int]],
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> None:
    """Consume progress steps, reporting each; stop (raise :class:`Cancelled`) when asked."""
    for done, total in steps:
        if progress is not None:
            progress(done, total)
        if should_stop is not None and should_stop() and done < total:
            raise Cancelled


class TiledRun:
    """What every model's run shares: a grid, the tiles to visit, progress by batch.

    Subclasses set ``merger`` and turn it into their result; `steps()` is a generator so a
    napari ``thread_worker`` can report progress and stop between batches.
    """

    grid: TileGrid
    source: Any
    predictor: Callable[[np.ndarray], Any]
    merger: Merger
    batch_size: int
    origins: np.ndarray

    tissue: TissueMask | None = None
    read: TileReader | None = None  # model input at a tile origin (default: the tile)
    readers: int | None = None  # tile-reading threads (default: `default_readers`)
    read_batch: Callable[[np.ndarray], Any] | None = None  # a batch's input at once

    def restrict_to_tissue(
        self, tissue: TissueMask, min_fraction: float = 0.05, *, source: Any = None
    ) -> int:
        """Only tiles with at least ``min_fraction`` tissue go to the model; returns how many.
        ``source`` (the slide's path) names the file when none does."""
        self.tissue = tissue
        self.origins = tissue.tissue_origins(self.grid, min_fraction)
        if len(self.origins) == 0:
            where = f"{source}: " if source is not None else ""
            raise ValueError(
                f"{where}no tile in the region holds {min_fraction:.0%} tissue: nothing to "
                "run on (lower the minimum tissue fraction, or run on all tiles)"
            )
        return len(self.origins)

    def area_level0_px(self) -> float:
        """The analysed area in level-0 pixels: the region, or the tissue inside it."""
        y0, x0, y1, x1 = self.grid.region
        d = self.grid.downsample
        if self.tissue is None:
            return float((y1 - y0) * (x1 - x0)) * d * d
        ty, tx = self.tissue.downsample
        window = self.tissue.mask[
            int(y0 * d / ty) : math.ceil(y1 * d / ty), int(x0 * d / tx) : math.ceil(x1 * d / tx)
        ]
        return float(window.sum()) * ty * tx

    @property
    def read_px(self) -> int:
        """The side of what one read returns (a classifier reads its patch, not the cell)."""
        return self.grid.tile

    def visit_order(self) -> np.ndarray:
        """The tile origins in the order they are read: row-major, as stitching needs."""
        return self.origins

    def steps(self) -> Iterator[tuple[int, int]]:
        yield from iter_tiled(
            self.grid,
            self.source,
            self.predictor,
            self.merger,
            origins=self.visit_order(),
            batch_size=self.batch_size,
            read=self.read,
            readers=self.readers
            or default_readers(getattr(self.predictor, "device", "cpu"), self.read_px),
            read_batch=self.read_batch,
        )

    def run(
        self, progress: Progress | None = None, should_stop: Callable[[], bool] | None = None
    ) -> None:
        """All steps; ``should_stop()`` between batches raises :class:`Cancelled`."""
        drive(self.steps(), progress, should_stop)
