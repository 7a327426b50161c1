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

from napari_mitosis.detection.review import REVIEW_KEY
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
    """A heatmap (translucent image; one per class for a K-class grid) and its masks
    (labels, named by class where the file says), placed on their slide in µm."""
    from napari_mitosis.io.ome_zarr import read_ome_zarr

    grid = read_ome_zarr(path)
    units = ("micrometer", "micrometer") if grid.unit else ("pixel", "pixel")
    scale, translate = grid.scale[-2:], grid.translate[-2:]
    name = path.name.removesuffix(".ome.zarr")
    extra = grid.extra
    per_class = grid.levels[0].ndim == 3
    channels = (
        [(c.get("label", f"channel {k}"), k) for k, c in enumerate(grid.channels)]
        if per_class
        else [("probability", None)]
    )
    if per_class and not grid.channels:
        channels = [(f"channel {k}", k) for k in range(grid.levels[0].shape[0])]

    def pick(levels: list[Any], channel: int | None) -> list[Any]:
        return levels if channel is None else [level[channel] for level in levels]

    images: dict[str, list[Any]] = {n: pick(grid.levels, k) for n, k in channels}
    labels = grid.labels
    common = {"scale": scale, "translate": translate, "units": units}
    if {"origin_level0_yx", "cell_level0_px", "end_level0_yx"} <= set(extra):
        # A grid we wrote knows where its slide region ends: cut it there (`grid_layers`).
        from napari_mitosis._napari.grid_layers import grid_layers

        cell = float(extra["cell_level0_px"])
        for channel_name, levels in list(images.items()):
            images[channel_name], labels, geometry = grid_layers(
                levels[0],
                {label: lv[0] for label, lv in grid.labels.items()},
                origin0=tuple(extra["origin_level0_yx"]),
                cell0=cell,
                end0=tuple(extra["end_level0_yx"]),
                scale0=tuple(s / cell for s in scale),
            )
        common = {**geometry, "units": units}
    layers: list[LayerData] = []
    for index, (channel_name, levels) in enumerate(images.items()):
        multi = len(levels) > 1
        colour = grid.channels[index].get("color") if per_class and grid.channels else None
        colormap: Any = "inferno"
        if colour:
            rgb = [int(colour[i : i + 2], 16) / 255 for i in (0, 2, 4)]
            colormap = {"colors": [[*rgb, 0.0], [*rgb, 1.0]], "name": f"class {channel_name}"}
        layers.append(
            (
                levels if multi else levels[0],
                {
                    "name": f"{name} {'prob ' if per_class else ''}{channel_name}",
                    "colormap": colormap,
                    "opacity": 0.7 if per_class else 0.5,
                    "contrast_limits": (0.0, 1.0),
                    "multiscale": multi,
                    "metadata": grid.extra,
                    "visible": index == 0,
                    **common,
                },
                "image",
            )
        )
    for label, label_levels in labels.items():
        data = label_levels if len(label_levels) > 1 else label_levels[0]
        kwargs: dict[str, Any] = {
            "name": f"{name} {label}",
            "opacity": 0.4,
            "multiscale": len(label_levels) > 1,
        }
        names = grid.label_names.get(label)
        if names:
            values = sorted(names)
            kwargs["features"] = {
                "index": [0, *values],
                "class": ["none", *(names[v] for v in values)],
            }
        layers.append((data, {**kwargs, **common}, "labels"))
    return layers


#: feature column ← saved review property, and its value when absent.
REVIEW_COLUMNS = (
    ("review", "decision", ""),
    ("reviewer", "reviewer", ""),
    ("review_time", "time", ""),
    ("added", "added", False),
)


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
        reviews = [a.properties.get(REVIEW_KEY) for a in items]
        if any(reviews):  # a saved review: its state comes back as feature columns
            for column, key, fill in REVIEW_COLUMNS:
                table[column] = [(r or {}).get(key, fill) for r in reviews]
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
