"""Held-out regions for training on one slide: square fields on a grid, the validation
region a band of whole rows or columns, so no training crop overlaps a validation field.

The band is the bottom rows or the right-most columns — whichever holds nearer
``val_fraction`` of the annotated objects — with objects left on both sides; with the
objects' classes, every class on both sides, and the band nearest ``val_fraction`` of the
class that strays furthest from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mitosis.engine.tissue import TissueMask


@dataclass(frozen=True)
class RegionSplit:
    """A grid of ``field`` px fields and the band held out for validation."""

    field: int
    rows: int
    cols: int
    axis: int  # 0: the bottom rows are held out; 1: the right-most columns
    cut: int  # the first held-out row or column

    def held_out(self, row: int, col: int) -> bool:
        return (row, col)[self.axis] >= self.cut

    def cells(self, centres_yx: np.ndarray) -> np.ndarray:
        """The (row, col) of each (y, x) centre."""
        cells = np.asarray(centres_yx, float).reshape(-1, 2) // self.field
        return np.minimum(cells, [self.rows - 1, self.cols - 1]).astype(int)

    def describe(self, held: int, total: int) -> str:
        side = ("bottom", "rows") if self.axis == 0 else ("right", "columns")
        count = (self.rows, self.cols)[self.axis]
        return (
            f"split by region: {held} of {total} figures held out in the {side[0]}-most "
            f"{count - self.cut} of {count} {side[1]} of {self.field} px fields"
        )


def region_split(
    centres_yx: np.ndarray,
    shape: tuple[int, int],
    field: int,
    val_fraction: float,
    what: str | Path,
    classes: np.ndarray | None = None,
) -> RegionSplit:
    """The grid over a level-0 ``shape`` and its held-out band for these object centres
    (of these ``classes``, when given)."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    field = min(field, *shape)
    grid = RegionSplit(field, shape[0] // field, shape[1] // field, 0, 0)
    cells = grid.cells(centres_yx)
    groups = np.zeros(len(cells), int) if classes is None else np.asarray(classes)
    members = [groups == g for g in np.unique(groups)]
    best: tuple[float, int, int] | None = None
    for axis in (0, 1):
        for cut in range(1, (grid.rows, grid.cols)[axis]):
            held = cells[:, axis] >= cut
            shares = [float(np.mean(held[m])) for m in members]
            if min(shares) <= 0 or max(shares) >= 1:
                continue
            error = max(abs(s - val_fraction) for s in shares)
            if best is None or error < best[0]:
                best = (error, axis, cut)
    if best is None:
        what_lies = "figures" if classes is None else "every class's annotations"
        raise ValueError(
            f"{what}: cannot hold out a region with {what_lies} on both sides of a band "
            f"of {field} px fields"
        )
    return RegionSplit(field, grid.rows, grid.cols, best[1], best[2])


def field_has_tissue(
    tissue: TissueMask, row: int, col: int, field: int, least: float = 0.3
) -> bool:
    """Whether more than ``least`` of the field at (row, col) is tissue."""
    ds = tissue.downsample
    y0, x0 = int(row * field / ds[0]), int(col * field / ds[1])
    y1, x1 = int((row + 1) * field / ds[0]) + 1, int((col + 1) * field / ds[1]) + 1
    window = tissue.mask[y0:y1, x0:x1]
    return bool(window.size and window.mean() > least)
