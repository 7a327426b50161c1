"""A classified slide region: per-cell class probabilities, the mask or class labels they
give, and their forms for other tools (QuPath polygons and tiles, WSInfer's patch table).

Two-class models (one sigmoid output, or two softmax outputs) give a tumour heatmap —
the probability of ``classes[1]`` — and a thresholded mask. Models of K > 2 classes
(WSInfer's zoo has up to 9) give one heatmap per class and an argmax label grid (label
k + 1 is ``classes[k]``); their ``heatmap`` is the winning class's probability.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import find_contours, label

from napari_mitosis.engine.tiling import Region
from napari_mitosis.engine.tissue import TissueMask
from napari_mitosis.io.geojson import Annotation

#: QuPath's class name for the positive class of a two-class tumour model.
TUMOUR = "Tumor"


@dataclass
class HeatmapResult:
    """Per-cell probabilities over ``region`` of pyramid ``level``.

    Cell (i, j) covers level-0 pixels ``origin + (i, j) × cell_level0`` onward, one cell each
    way; the model read a ``patch`` px patch centred on it. ``mpp`` is µm per cell.
    """

    heatmap: Any  # (rows, cols) float32, NumPy or lazily allocated zarr
    mask: np.ndarray  # (rows, cols) uint8: 1 tumour / k + 1 class k; 0 not (or not analysed)
    visited: np.ndarray  # (rows, cols) bool: cells sent to the model
    region: Region  # in level pixels
    level: int
    downsample: float
    level_mpp: tuple[float, float] | None
    cell: int  # level pixels per cell
    patch: int  # level pixels the model read per cell
    threshold: float | None  # None for K > 2 classes (argmax)
    classes: tuple[str, ...] = ("normal", "tumour")
    probabilities: Any = None  # (K, rows, cols) for softmax models; None for one sigmoid
    resampled: float = 1.0  # slide pixels per model pixel (< 1: upsampled; `io.resampled`)
    note: str = ""  # `resampling_note`: what the model saw, when not the slide's own pixels

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    @property
    def cell_level0(self) -> float:
        return self.cell * self.downsample

    @property
    def origin_level0(self) -> tuple[float, float]:
        return self.region[0] * self.downsample, self.region[1] * self.downsample

    @property
    def end_level0(self) -> tuple[float, float]:
        """Where the analysed region ends (level-0 px): the last cells may reach past it."""
        return self.region[2] * self.downsample, self.region[3] * self.downsample

    @property
    def mpp(self) -> tuple[float, float] | None:
        if self.level_mpp is None:
            return None
        return self.level_mpp[0] * self.cell, self.level_mpp[1] * self.cell

    def label_names(self) -> dict[int, str]:
        """Mask value → class name (two-class: 1 is ``classes[1]``)."""
        if self.binary:
            return {1: self.classes[1]}
        return {k + 1: name for k, name in enumerate(self.classes)}

    def class_probability(self) -> dict[str, np.ndarray]:
        """Class name → (rows, cols) probability grid (sigmoid models: ``classes[1]`` only)."""
        if self.probabilities is None:
            return {self.classes[1]: np.asarray(self.heatmap)}
        grids = np.asarray(self.probabilities)
        return {name: grids[k] for k, name in enumerate(self.classes)}

    def class_areas_mm2(self) -> dict[str, float] | None:
        """Area each mask label covers (None without µm/px)."""
        if self.mpp is None:
            return None
        cell = self.mpp[0] * self.mpp[1] / 1e6
        return {
            name: float((self.mask == v).sum()) * cell for v, name in self.label_names().items()
        }

    def tumour_area_mm2(self) -> float | None:
        """Area called ``classes[1]`` by a two-class model (None: no µm/px, or K > 2)."""
        if self.mpp is None or not self.binary:
            return None
        return float((self.mask == 1).sum()) * self.mpp[0] * self.mpp[1] / 1e6

    def tumour_region(self) -> TissueMask:
        """The tumour mask in level-0 terms, for running detectors "inside tumour" (cells
        before the region's origin count as not tumour)."""
        if not self.binary:
            raise ValueError(
                f"a {len(self.classes)}-class model has no tumour region; detect in tissue"
            )
        cell = self.cell_level0
        pad = [(round(o / cell), 0) for o in self.origin_level0]
        return TissueMask(np.pad(self.mask == 1, pad), (cell, cell))

    def _to_level0(self, cells: np.ndarray) -> np.ndarray:
        oy, ox = self.origin_level0
        return np.stack(
            [
                oy + (cells[:, 0] + 0.5) * self.cell_level0,
                ox + (cells[:, 1] + 0.5) * self.cell_level0,
            ],
            axis=1,
        )

    def to_annotations(self, name: str | None = None) -> list[Annotation]:
        """Each class's regions as polygons in level-0 pixels (contours between cell
        centres), classified by class name (``name``, default QuPath's "Tumor", for a
        two-class model's tumour), with the region's area and mean class probabilities."""
        grids = self.class_probability()
        mask = np.asarray(self.mask)
        out = []
        for value, class_name in self.label_names().items():
            title = (name or TUMOUR) if self.binary else class_name
            components = label(mask == value, connectivity=1)
            for index in range(1, int(components.max()) + 1):
                inside = components == index
                measurements = {f"mean prob_{c}": float(g[inside].mean()) for c, g in grids.items()}
                if self.mpp is not None:
                    measurements["Area µm^2"] = float(inside.sum()) * self.mpp[0] * self.mpp[1]
                padded = np.pad(inside, 1).astype(float)
                for contour in find_contours(padded, 0.5):
                    if len(contour) < 4:
                        continue
                    yx = self._to_level0(contour - 1)  # undo the padding
                    out.append(Annotation(yx[:-1], "polygon", title, dict(measurements)))
        return out

    def patch_table(self) -> tuple[list[str], np.ndarray]:
        """WSInfer's per-patch table for every classified cell: ``minx, miny, width,
        height`` of the patch the model read (level-0 px), then ``prob_<class>``."""
        rows, cols = np.nonzero(self.visited)
        grids = self.class_probability()
        size = self.patch * self.downsample
        centre_y = self.origin_level0[0] + (rows + 0.5) * self.cell_level0
        centre_x = self.origin_level0[1] + (cols + 0.5) * self.cell_level0
        corner = np.stack([centre_x - size / 2, centre_y - size / 2], axis=1)
        columns = ["minx", "miny", "width", "height", *(f"prob_{c}" for c in grids)]
        values = np.column_stack(
            [
                np.round(corner),
                np.full((len(rows), 2), round(size)),
                *(g[rows, cols] for g in grids.values()),
            ]
        )
        return columns, values

    def tile_annotations(self) -> list[Annotation]:
        """Every classified cell as a QuPath tile (a detection square) with its class
        probabilities as measurements, classified by its label."""
        rows, cols = np.nonzero(self.visited)
        grids = {c: np.asarray(g) for c, g in self.class_probability().items()}
        names = self.label_names()
        mask = np.asarray(self.mask)
        oy, ox = self.origin_level0
        step = self.cell_level0
        tiles = []
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            y0, x0 = oy + r * step, ox + c * step
            corners = np.array([[y0, x0], [y0, x0 + step], [y0 + step, x0 + step], [y0 + step, x0]])
            value = int(mask[r, c])
            title = names.get(value) if value else (self.classes[0] if self.binary else None)
            measurements = {f"prob_{k}": float(g[r, c]) for k, g in grids.items()}
            tiles.append(Annotation(corners, "polygon", title, measurements, "detection"))
        return tiles
