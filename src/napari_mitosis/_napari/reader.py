"""napari reader: slides, plain images, QuPath GeoJSON and our OME-Zarr heatmaps become
layers.

Only converts: opening is `napari_mitosis.io.formats.open_slide` (DICOM WSI series folders
included), GeoJSON parsing is `io.geojson.read_geojson`, OME-Zarr is `io.ome_zarr.read_ome_zarr`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.io.formats import SUPPORTED_SUFFIXES, is_dicom, open_slide
from napari_mitosis.io.geojson import Annotation, read_geojson
from napari_mitosis.io.slide import Slide

LayerData = tuple[Any, dict[str, Any], str]
GEOJSON_SUFFIXES = (".geojson",)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader for paths this plugin handles, else None so napari tries others."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        return None
    for p in map(Path, paths):
        suffix = p.suffix.lower()
        if p.is_dir():
            if not (is_our_ome_zarr(p) or is_dicom_series(p)):
                return None
        elif suffix not in SUPPORTED_SUFFIXES + GEOJSON_SUFFIXES:
            return None
    return read_paths


def is_our_ome_zarr(path: Path) -> bool:
    """A heatmap OME-Zarr this package wrote (other OME-Zarr is napari-ome-zarr's job)."""
    import json

    try:
        attrs = json.loads((path / ".zattrs").read_text())
    except (OSError, ValueError):
        return False
    return "multiscales" in attrs and "napari_mitosis" in attrs


def is_dicom_series(path: Path) -> bool:
    """A folder holding DICOM files (a DICOM WSI series that OpenSlide opens whole)."""
    return any(p.is_file() and is_dicom(p) for p in path.iterdir())


def read_paths(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, str) else list(path)
    layers: list[LayerData] = []
    for p in map(Path, paths):
        if p.suffix.lower() in GEOJSON_SUFFIXES:
            layers.extend(annotation_layer_data(read_geojson(p), name=p.stem))
        elif p.is_dir() and is_our_ome_zarr(p):
            layers.extend(grid_layer_data(p))
        else:
            layers.append(slide_layer_data(open_slide(p)))
    return layers


def slide_layer_data(slide: Slide, name: str | None = None) -> LayerData:
    """One multiscale image (or labels) layer in µm, carrying the slide's metadata."""
    meta = slide.metadata
    kwargs: dict[str, Any] = {
        "name": name or slide.path.stem,
        "scale": slide.scale(),
        "units": slide.units(),
        "metadata": meta.as_dict(),
    }
    data = slide.levels if slide.multiscale else slide.levels[0]
    if slide.multiscale:
        kwargs["multiscale"] = True
    if meta.layer_type == "labels":
        return data, kwargs, "labels"
    kwargs["rgb"] = slide.rgb
    if slide.levels[0].dtype == np.uint8:
        # Given explicitly so napari does not read pixels to guess them.
        kwargs["contrast_limits"] = (0, 255)
    return data, kwargs, "image"


def grid_layer_data(path: Path) -> list[LayerData]:
    """A heatmap (translucent image) and its masks (labels), placed on their slide in µm."""
    from napari_mitosis.io.ome_zarr import read_ome_zarr

    grid = read_ome_zarr(path)
    units = ("micrometer", "micrometer") if grid.unit else ("pixel", "pixel")
    common = {"scale": grid.scale, "translate": grid.translate, "units": units}
    name = path.name.removesuffix(".ome.zarr")
    levels, labels = grid.levels, grid.labels
    extra = grid.extra
    if {"origin_level0_yx", "cell_level0_px", "end_level0_yx"} <= set(extra):
        # A grid we wrote knows where its slide region ends: cut it there (`grid_layers`).
        from napari_mitosis._napari.grid_layers import grid_layers

        cell = float(extra["cell_level0_px"])
        heatmap, masks, geometry = grid_layers(
            grid.levels[0],
            {label: lv[0] for label, lv in grid.labels.items()},
            origin0=tuple(extra["origin_level0_yx"]),
            cell0=cell,
            end0=tuple(extra["end_level0_yx"]),
            scale0=tuple(s / cell for s in grid.scale),
        )
        levels, labels, common = heatmap, masks, {**geometry, "units": units}
    multi = len(levels) > 1
    layers: list[LayerData] = [
        (
            levels if multi else levels[0],
            {
                "name": f"{name} probability",
                "colormap": "inferno",
                "opacity": 0.5,
                "contrast_limits": (0.0, 1.0),
                "multiscale": multi,
                "metadata": grid.extra,
                **common,
            },
            "image",
        )
    ]
    for label, label_levels in labels.items():
        data = label_levels if len(label_levels) > 1 else label_levels[0]
        kwargs = {"name": f"{name} {label}", "opacity": 0.4, "multiscale": len(label_levels) > 1}
        layers.append((data, {**kwargs, **common}, "labels"))
    return layers


def annotation_layer_data(
    annotations: list[Annotation], name: str, mpp: tuple[float, float] | None = None
) -> list[LayerData]:
    """Shapes for regions and Points for points, in level-0 pixels (scaled by ``mpp``)."""
    scale = mpp or (1.0, 1.0)
    units = ("micrometer", "micrometer") if mpp else ("pixel", "pixel")
    meta = {"mpp": list(mpp) if mpp else None, "coordinates": "level-0 pixels (y, x)"}
    shapes = [a for a in annotations if a.shape_type != "point"]
    points = [a for a in annotations if a.shape_type == "point"]
    layers: list[LayerData] = []

    def features(items: list[Annotation]) -> dict[str, list[Any]]:
        names = sorted({k for a in items for k in a.measurements})
        table: dict[str, list[Any]] = {
            "classification": [a.classification or "" for a in items],
            "object_type": [a.object_type for a in items],
        }
        for key in names:
            table[key] = [a.measurements.get(key, np.nan) for a in items]
        return table

    if shapes:
        kwargs = {
            "name": name,
            "shape_type": [a.shape_type if a.shape_type != "line" else "path" for a in shapes],
            "features": features(shapes),
            "scale": scale,
            "units": units,
            "metadata": meta,
            "edge_color": "yellow",
            "face_color": "transparent",
        }
        layers.append(([a.coords for a in shapes], kwargs, "shapes"))
    if points:
        kwargs = {
            "name": f"{name} points" if shapes else name,
            "features": features(points),
            "scale": scale,
            "units": units,
            "metadata": meta,
        }
        layers.append((np.array([a.coords[0] for a in points]), kwargs, "points"))
    return layers
