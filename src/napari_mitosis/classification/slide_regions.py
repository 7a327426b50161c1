"""Classifier examples from regions drawn on slides, for two or more tissue classes.

A slide's annotation names its regions by class: QuPath GeoJSON polygons whose
classification is one of ``classes`` (matched without regard to case; later polygons
are drawn over earlier ones), or a labels image of the slide's extent whose value k + 1
is ``classes[k]`` (0: not annotated). The slide is cut into the cells that inference
scores; a cell takes the class that covers at least ``min_coverage`` of it, and patches
are centred on their cells as at inference (`PatchReader`). Unlike the tumour-versus-rest
rule of `data.slide_patches`, no tissue test applies: the annotator said what each
region is, glass or fat included.

One slide is held out by region (`engine.region_split`): a band of whole rows or
columns of fields, chosen so that every class lies on both sides, and a patch is kept only
when it lies wholly on its side, so no training patch overlaps a validation patch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from napari_mitosis.classification.patches import PatchReader, context_level
from napari_mitosis.engine.region_split import region_split
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.engine.tissue import TissueMask
from napari_mitosis.io.formats import open_slide
from napari_mitosis.io.geojson import read_geojson
from napari_mitosis.io.slide import Slide

Labelled = tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ClassRegions:
    """A label grid (0: none, k + 1: ``classes[k]``) and its downsample from level 0."""

    labels: np.ndarray
    downsample: tuple[float, float]
    classes: tuple[str, ...]

    def masks(self) -> list[TissueMask]:
        return [TissueMask(self.labels == k + 1, self.downsample) for k in range(len(self.classes))]


def class_regions(
    slide: Slide, annotation: str | Path, classes: Sequence[str], *, max_size: int = 4096
) -> ClassRegions:
    """The per-class regions of ``slide`` from a GeoJSON of classified polygons or a
    labels image, on a grid of at most ``max_size`` px."""
    annotation, classes = Path(annotation), tuple(classes)
    if len(classes) < 2:
        raise ValueError(f"{annotation}: name at least two classes, got {list(classes)}")
    if not annotation.is_file():
        raise FileNotFoundError(f"{annotation}: no such annotation file")
    height, width = slide.levels[0].shape[:2]
    if annotation.name.lower().endswith((".geojson", ".json")):
        factor = max(1.0, max(height, width) / max_size)
        shape = (max(1, round(height / factor)), max(1, round(width / factor)))
        downsample = (height / shape[0], width / shape[1])
        return ClassRegions(_drawn(annotation, classes, shape, downsample), downsample, classes)
    with open_slide(annotation) as image:
        levels = image.levels
        level = next((lv for lv in levels if max(lv.shape[:2]) <= max_size), levels[-1])
        step = max(1, int(np.ceil(max(level.shape[:2]) / max_size)))
        labels = np.asarray(level[::step, ::step])  # nearest neighbour: labels stay labels
    if labels.ndim == 3:
        labels = labels[..., 0]
    ratio = (height / labels.shape[0], width / labels.shape[1])
    if abs(np.log(ratio[0] / ratio[1])) > 0.02:
        raise ValueError(
            f"{annotation}: its aspect ({labels.shape[1]} × {labels.shape[0]}) does not "
            f"match the slide's ({width} × {height})"
        )
    if labels.max() > len(classes):
        raise ValueError(
            f"{annotation}: holds label {int(labels.max())} but only {len(classes)} classes "
            f"are named ({', '.join(classes)}; label k is the k-th)"
        )
    return ClassRegions(labels.astype(np.int32), ratio, classes)


def _drawn(
    path: Path, classes: tuple[str, ...], shape: tuple[int, int], downsample: tuple[float, float]
) -> np.ndarray:
    index = {name.lower(): k + 1 for k, name in enumerate(classes)}
    labels = np.zeros(shape, np.int32)
    seen: set[str] = set()
    for a in read_geojson(path):
        if a.shape_type == "point" or len(a.coords) < 3:
            continue
        seen.add(a.classification or "(unclassified)")
        value = index.get((a.classification or "").lower())
        if value is None:
            continue
        rr, cc = fill_polygon(a.coords[:, 0] / downsample[0], a.coords[:, 1] / downsample[1], shape)
        labels[rr, cc] = value
    missing = [c for c in classes if not np.any(labels == index[c.lower()])]
    if missing:
        raise ValueError(
            f"{path}: no polygons of class {', '.join(missing)} (its polygons are "
            f"{', '.join(sorted(seen)) or 'none'})"
        )
    return labels


def cell_grid(slide: Slide, level: int, window: int) -> TileGrid:
    """The ``window``-px cells of ``level`` that inference scores."""
    return TileGrid.over(
        slide.sources[level].shape,
        window,
        0,
        level=level,
        downsample=slide.level_downsample(level)[1],
        uniform=True,
    )


def cell_classes(grid: TileGrid, regions: ClassRegions, min_coverage: float = 0.5) -> np.ndarray:
    """Each cell's class 0…K−1: the one covering most of it, if at least ``min_coverage``;
    −1 for the rest."""
    fractions = np.stack([mask.tile_fractions(grid) for mask in regions.masks()])
    best = fractions.argmax(axis=0)
    return np.where(fractions.max(axis=0) >= min_coverage, best, -1)


@dataclass
class RegionExamples:
    """Training and validation patches of one slide, held out by region."""

    train: Labelled
    validation: Labelled
    classes: tuple[str, ...]
    description: str

    def counts(self) -> dict[str, tuple[int, int]]:
        """Class name → (training, validation) patches."""
        k = len(self.classes)
        fit = np.bincount(self.train[1], minlength=k)
        val = np.bincount(self.validation[1], minlength=k)
        return {c: (int(fit[i]), int(val[i])) for i, c in enumerate(self.classes)}


def region_examples(
    slide: Slide,
    grid: TileGrid,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    patch: int,
    per_class: int,
    val_fraction: float = 0.2,
    context: float | None = None,
    rng: np.random.Generator,
    what: str | Path = "",
) -> RegionExamples:
    """Up to ``per_class`` patches of each class on each side of a held-out region, from
    the cells of ``grid`` and their classes (−1: none)."""
    keep = labels >= 0
    origins, labels = grid.origins()[keep], labels[keep]
    centres = (origins + grid.tile / 2) * grid.downsample
    height, width = slide.levels[0].shape[:2]
    reach = patch * grid.downsample  # a patch's side in level-0 px
    split = region_split(
        centres, (height, width), max(int(2 * reach), 64), val_fraction, what, labels
    )
    half, boundary = reach / 2, split.cut * split.field
    along = centres[:, split.axis]
    sides = {"train": along + half <= boundary, "validation": along - half >= boundary}
    sets: dict[str, Labelled] = {}
    for name, inside in sides.items():
        chosen = []
        for k, c in enumerate(classes):
            pool = np.flatnonzero(inside & (labels == k))
            if not len(pool):
                raise ValueError(
                    f"{what}: no {c} cells left on the {name} side of the held-out region; "
                    "annotate more of it, or elsewhere on the slide"
                )
            chosen.append(rng.choice(pool, min(per_class, len(pool)), replace=False))
        index = np.concatenate(chosen)
        sets[name] = (
            read_patches(slide, grid, origins[index], patch, context),
            labels[index].astype(int),
        )
    held = int(np.sum(sides["validation"]))
    description = split.describe(held, len(labels)).replace("figures", "annotated cells")
    return RegionExamples(sets["train"], sets["validation"], tuple(classes), description)


def sample_cells(
    labels: np.ndarray, classes: int, per_class: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices of up to ``per_class`` cells of each class."""
    chosen = []
    for k in range(classes):
        pool = np.flatnonzero(labels == k)
        chosen.append(rng.choice(pool, min(per_class, len(pool)), replace=False))
    return np.concatenate(chosen)


def read_patches(
    slide: Slide, grid: TileGrid, origins: np.ndarray, patch: int, context: float | None
) -> np.ndarray:
    """The patches centred on these cells of ``grid`` (`PatchReader`, as at inference)."""
    context_source, scale = context_level(slide, grid.level, context)
    read = PatchReader(
        slide.sources[grid.level],
        patch=patch,
        cell=grid.tile,
        context=context,
        context_source=context_source,
        context_scale=scale,
    )
    return np.stack([read(int(y), int(x)) for y, x in origins])
