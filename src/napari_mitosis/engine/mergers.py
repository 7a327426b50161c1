"""Mergers: where each batch of model outputs lands in the run's result.

Every `TiledRun` hands its batches to one of these (`add(origins, outputs)`, then
`finish()`): the blended probability map for the U-Net, boxes for detectors, one score per
cell for classifiers. ``lazy_probability`` gives the big outputs chunks that exist only
once written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.io.detections import Detections
from napari_mitosis.io.geojson import candidate_class


def lazy_probability(
    shape: tuple[int, ...], chunk: int = 512, store: str | Path | None = None
) -> zarr.Array:
    """A float32 zarr array whose chunks exist only once written (on disk with ``store``);
    a leading class axis, if any, is one chunk."""
    chunks = (*shape[:-2], min(chunk, shape[-2]), min(chunk, shape[-1]))
    return zarr.create_array(
        store=str(store) if store else {},
        shape=shape,
        chunks=chunks,
        dtype="float32",
        fill_value=0.0,
    )


def blend_window(tile: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """Weights that ramp linearly over the overlap at every tile edge (no seams).

    ``floor`` keeps single-coverage pixels at the image border well defined.
    """
    if overlap == 0:
        return np.ones((tile, tile), np.float32)
    i = np.arange(tile, dtype=np.float32)
    ramp = np.clip(np.minimum(i + 0.5, tile - i - 0.5) / overlap, floor, 1.0)
    return np.outer(ramp, ramp)


class BlendedStitcher:
    """Blends overlapping (N, C, t, t) or (N, t, t) predictions into ``out``.

    Tiles arrive row-major, so only one band of ``tile`` rows is open at a time: memory is
    O(tile × region width), whatever the image height. Rows above the current tile row can
    receive nothing more; they are normalised and written to ``out`` (any array-like with
    slice assignment: NumPy, zarr).
    """

    def __init__(self, grid: TileGrid, out: Any, *, overlap: int, channel: int = 0) -> None:
        self.grid = grid
        self.out = out
        self.channel = channel
        _, x0, _, x1 = grid.region
        self.width = x1 - x0
        self.weight = blend_window(grid.tile, overlap)
        self.band_top = grid.region[0]
        self.sum = np.zeros((grid.tile, self.width + grid.tile), np.float32)
        self.norm = np.zeros_like(self.sum)

    def _flush(self, until: int) -> None:
        """Write finished rows [band_top, until) and slide the band down."""
        until = min(until, self.grid.region[2])
        y0 = self.grid.region[0]
        while self.band_top < until:
            rows = min(until - self.band_top, self.grid.tile)
            norm = np.maximum(self.norm[:rows, : self.width], 1e-12)
            self.out[self.band_top - y0 : self.band_top - y0 + rows, :] = (
                self.sum[:rows, : self.width] / norm
            )
            self.sum = np.roll(self.sum, -rows, axis=0)
            self.norm = np.roll(self.norm, -rows, axis=0)
            self.sum[-rows:] = 0
            self.norm[-rows:] = 0
            self.band_top += rows

    def add(self, origins: np.ndarray, outputs: np.ndarray) -> None:
        if outputs.ndim == 4:
            outputs = outputs[:, self.channel]
        x_origin = self.grid.region[1]
        tile = self.grid.tile
        for (y, x), prediction in zip(origins, outputs, strict=True):
            if y > self.band_top:
                self._flush(int(y))
            dy, dx = int(y) - self.band_top, int(x) - x_origin
            self.sum[dy : dy + tile, dx : dx + tile] += prediction * self.weight
            self.norm[dy : dy + tile, dx : dx + tile] += self.weight

    def finish(self) -> Any:
        self._flush(self.grid.region[2])
        return self.out


class ScoreGridMerger:
    """Writes each cell's probability at its grid position (cells skipped stay 0): one
    score per cell into a (rows, cols) grid, or K class probabilities into (K, rows, cols)."""

    def __init__(self, grid: TileGrid, out: Any) -> None:
        self.grid, self.out = grid, out
        self.visited = np.zeros(out.shape[-2:], bool)

    def add(self, origins: np.ndarray, scores: np.ndarray) -> None:
        per_class = len(self.out.shape) == 3
        if np.ndim(scores) != (2 if per_class else 1):
            raise ValueError(
                f"the model gives scores of shape {np.shape(scores)[1:]} per patch; this grid "
                f"holds {self.out.shape[0] if per_class else 1} per cell"
            )
        y0, x0 = self.grid.region[:2]
        rows = (origins[:, 0] - y0) // self.grid.stride
        cols = (origins[:, 1] - x0) // self.grid.stride
        for r, c, s in zip(rows, cols, scores, strict=True):
            if per_class:
                self.out[:, int(r), int(c)] = s
            else:
                self.out[int(r), int(c)] = s
        self.visited[rows, cols] = True


class TileBoxMerger:
    """Collects per-tile boxes in level-0 pixels; each object is reported once.

    A tile keeps a box only when the box centre lies in the part of the tile it owns (half
    the overlap in from each inner edge), so an object cut by a tile edge is taken from the
    tile that sees it whole; ``batched_nms`` then removes any duplicate left on a seam.
    """

    def __init__(
        self,
        grid: TileGrid,
        *,
        overlap: int,
        iou: float = 0.3,
        class_names: tuple[str, ...] = ("background", "mitosis"),
    ) -> None:
        self.grid = grid
        self.margin = overlap / 2
        self.iou = iou
        self.class_names = class_names
        self.boxes: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def add(self, origins: np.ndarray, outputs: list[dict[str, np.ndarray]]) -> None:
        y_first, x_first, y_end, x_end = self.grid.region
        tile = self.grid.tile
        for (y, x), out in zip(origins, outputs, strict=True):
            boxes = np.asarray(out["boxes"], float).reshape(-1, 4)
            if not len(boxes):
                continue
            cx = (boxes[:, 0] + boxes[:, 2]) / 2
            cy = (boxes[:, 1] + boxes[:, 3]) / 2
            lo_x = 0 if x == x_first else self.margin
            lo_y = 0 if y == y_first else self.margin
            hi_x = tile if x + tile >= x_end else tile - self.margin
            hi_y = tile if y + tile >= y_end else tile - self.margin
            keep = (cx >= lo_x) & (cx < hi_x) & (cy >= lo_y) & (cy < hi_y)
            shifted = boxes[keep] + np.array([x, y, x, y], float)
            self.boxes.append(shifted * self.grid.downsample)
            self.scores.append(np.asarray(out["scores"], float)[keep])
            self.labels.append(np.asarray(out["labels"], int)[keep])

    def finish(self, mpp: tuple[float, float] | None = None) -> Detections:
        from torchvision.ops import batched_nms  # torchvision only where detectors run

        if not self.boxes:
            return Detections(np.zeros((0, 4)), mpp=mpp)
        boxes = torch.from_numpy(np.concatenate(self.boxes))
        scores = torch.from_numpy(np.concatenate(self.scores))
        labels = torch.from_numpy(np.concatenate(self.labels))
        keep = batched_nms(boxes, scores, labels, self.iou).numpy()
        names = [
            self.class_names[i] if i < len(self.class_names) else str(i)
            for i in labels.numpy()[keep]
        ]
        classes = [candidate_class(n) for n in names]  # unreviewed: "Mitosis candidate"
        return Detections(boxes.numpy()[keep], scores.numpy()[keep], classes, mpp)
