"""A `HeatmapResult` as files: probability and mask grids (pyramidal TIFFs or one OME-Zarr)
and region polygons as QuPath GeoJSON; optionally WSInfer's per-patch CSV and every patch
as a QuPath tile with its class probabilities.

Every output is written to a temporary name first and renamed only when all succeeded,
so a failure leaves none of them."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Literal

import numpy as np

from napari_mitosis.classification.heatmap import HeatmapResult
from napari_mitosis.io.geojson import write_geojson
from napari_mitosis.io.output_file import atomic_output, refuse_existing

HeatmapFormat = Literal["tiff", "ome-zarr"]
FORMATS = ("tiff", "ome-zarr")
#: Class colours (RGB) for K-class heatmaps and labels: Tableau-10, as QuPath and
#: matplotlib users know it.
PALETTE = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def class_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def file_safe(name: str) -> str:
    """A class name as part of a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def heatmap_paths(
    out_dir: str | Path,
    stem: str,
    fmt: HeatmapFormat = "tiff",
    classes: Sequence[str] = ("normal", "tumour"),
) -> list[Path]:
    """Where `write_heatmap` puts a heatmap of a model with ``classes``: the grids, then the
    region polygons. Two classes: the tumour probability and mask; K > 2: a probability
    per class and the class labels."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown heatmap format {fmt!r}; choose one of {list(FORMATS)}")
    out_dir = Path(out_dir)
    if len(classes) == 2:
        names = {
            "tiff": ["tumour_probability.tif", "tumour_mask.tif"],
            "ome-zarr": ["tumour.ome.zarr"],
        }[fmt]
        names.append("tumour.geojson")
    elif fmt == "tiff":
        names = [f"prob_{file_safe(c)}.tif" for c in classes] + ["classes.tif", "classes.geojson"]
    else:
        names = ["classes.ome.zarr", "classes.geojson"]
    return [out_dir / f"{stem}.{name}" for name in names]


def patch_paths(out_dir: str | Path, stem: str, *, csv: bool, tiles: bool) -> list[Path]:
    """Where `write_heatmap` puts the per-patch CSV and the tiles GeoJSON, when asked."""
    names = [n for n, wanted in (("patches.csv", csv), ("patches.geojson", tiles)) if wanted]
    return [Path(out_dir) / f"{stem}.{name}" for name in names]


def _write_csv(path: Path, result: HeatmapResult) -> None:
    columns, values = result.patch_table()
    rows = [",".join(columns)]
    for row in values:
        corner = [str(int(v)) for v in row[:4]]
        rows.append(",".join([*corner, *(f"{v:.7g}" for v in row[4:])]))
    path.write_text("\n".join(rows) + "\n")


def write_heatmap(
    result: HeatmapResult,
    out_dir: str | Path,
    stem: str,
    *,
    fmt: HeatmapFormat = "tiff",
    csv: bool = False,
    tiles: bool = False,
    overwrite: bool = False,
) -> list[Path]:
    """Probabilities (float32) and mask/class labels in µm — pyramidal TIFFs, or one
    OME-Zarr with a channel per class and the labels under ``labels/`` — and class regions
    as QuPath GeoJSON polygons (area, mean class probabilities). ``csv``: WSInfer's
    per-patch table; ``tiles``: every patch as a QuPath tile with its probabilities.
    Both grid formats record the cell grid's level-0 origin and size."""
    # The writers' libraries (zarr, tifffile, dask) take ≈1 s to import: only when writing.
    from napari_mitosis.io.ome_zarr import write_ome_zarr
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff

    out_dir = Path(out_dir)
    paths = heatmap_paths(out_dir, stem, fmt, result.classes)
    extras = patch_paths(out_dir, stem, csv=csv, tiles=tiles)
    refuse_existing([*paths, *extras], overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = {
        "origin_level0_yx": list(result.origin_level0),
        "end_level0_yx": list(result.end_level0),
        "cell_level0_px": result.cell_level0,
        "patch_px": result.patch,
        "level": result.level,
        "threshold": result.threshold,
        "classes": list(result.classes),
    }
    grids = result.class_probability()
    names = result.label_names()
    with ExitStack() as stack:
        # The GeoJSON is entered first, so it is renamed into place last.
        geojson = stack.enter_context(atomic_output(paths[-1], overwrite=overwrite))
        write_geojson(geojson, result.to_annotations(), overwrite=True)
        for path in extras:
            tmp = stack.enter_context(atomic_output(path, overwrite=overwrite))
            if path.suffix == ".csv":
                _write_csv(tmp, result)
            else:
                write_geojson(tmp, result.tile_annotations(), overwrite=True)
        if fmt == "tiff":
            tmp = [stack.enter_context(atomic_output(p, overwrite=overwrite)) for p in paths[:-1]]
            probabilities = (
                [np.asarray(result.heatmap, np.float32)]
                if result.binary
                else [np.asarray(g, np.float32) for g in grids.values()]
            )
            for file, grid in zip(tmp, probabilities, strict=False):
                write_pyramid_tiff(file, grid, mpp=result.mpp, extra=extra, overwrite=True)
            write_pyramid_tiff(
                tmp[-1],
                result.mask,
                mpp=result.mpp,
                layer_type="labels",
                extra={**extra, "label_names": {str(v): n for v, n in names.items()}},
                overwrite=True,
            )
        else:
            mpp0 = None
            if result.level_mpp is not None:
                mpp0 = (
                    result.level_mpp[0] / result.downsample,
                    result.level_mpp[1] / result.downsample,
                )
            geometry = {
                "mpp0": mpp0,
                "origin_level0": result.origin_level0,
                "cell_level0": result.cell_level0,
                "extra": extra,
                "overwrite": overwrite,
            }
            if result.binary:
                write_ome_zarr(
                    paths[0],
                    np.asarray(result.heatmap, np.float32),
                    name="tumour probability",
                    labels={"tumour_mask": result.mask},
                    colours={1: (255, 40, 40, 255)},
                    label_names=names,
                    **geometry,
                )
            else:
                colours = [class_colour(k) for k in range(len(result.classes))]
                write_ome_zarr(
                    paths[0],
                    np.stack([np.asarray(g, np.float32) for g in grids.values()]),
                    name="class probability",
                    labels={"classes": result.mask},
                    colours={k + 1: (*c, 255) for k, c in enumerate(colours)},
                    label_names=names,
                    channel_names=list(result.classes),
                    channel_colours=colours,
                    **geometry,
                )
    return [*paths, *extras]
