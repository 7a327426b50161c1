"""napari writers: image/labels → pyramidal TIFF, shapes/points → QuPath GeoJSON.

napari's save dialog has no "replace" switch that reaches a plugin, so these writers never
replace an existing file: the user picks a new name (scripts pass ``overwrite=True`` to the
core writers). Coordinates go out in slide level-0 pixels: world coordinates divided by
the µm/pixel in the layer's metadata, or by its scale (napari gives layers drawn over a
slide the slide's scale).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.detection.review import QUPATH_CLASSES, REVIEW_KEY
from napari_mitosis.io.geojson import DETECTOR_KEY, Annotation, write_geojson
from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff


def _level0(data: Any, attributes: dict[str, Any]) -> Any:
    return data[0] if attributes.get("multiscale") else data


def _mpp(attributes: dict[str, Any]) -> tuple[float, float] | None:
    mpp = (attributes.get("metadata") or {}).get("mpp")
    if mpp:
        return float(mpp[-2]), float(mpp[-1])
    scale = attributes.get("scale")
    units = [str(u) for u in (attributes.get("units") or ())]
    if scale is not None and units and all(u in ("micrometer", "µm", "um") for u in units[-2:]):
        return float(scale[-2]), float(scale[-1])
    return None


def write_image_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """An image layer (multiscale or not) as a tiled pyramidal TIFF with its µm/pixel."""
    write_pyramid_tiff(path, _level0(data, attributes), mpp=_mpp(attributes))
    return [path]


def write_labels_tiff(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A labels layer as a lossless tiled pyramidal TIFF (nearest-neighbour levels)."""
    write_pyramid_tiff(path, _level0(data, attributes), mpp=_mpp(attributes), layer_type="labels")
    return [path]


def _to_level0(coords: np.ndarray, attributes: dict[str, Any]) -> np.ndarray:
    coords = np.asarray(coords, float)[:, -2:]
    scale = np.asarray(attributes.get("scale", (1.0, 1.0)), float)[-2:]
    translate = np.asarray(attributes.get("translate", (0.0, 0.0)), float)[-2:]
    world = coords * scale + translate
    mpp = (attributes.get("metadata") or {}).get("mpp") or scale
    return world / np.asarray(mpp, float)[-2:]


def _feature_rows(
    attributes: dict[str, Any], n: int
) -> list[tuple[str | None, dict[str, float], dict[str, Any]]]:
    """(class, measurements, properties) per object; a reviewed layer's ``review`` column
    becomes the QuPath class, with reviewer and time kept as review properties."""
    table = attributes.get("features")
    columns = {} if table is None else {k: list(table[k]) for k in table}
    names = columns.pop("classification", None) or columns.pop("class", None)
    columns.pop("object_type", None)
    review = {
        column: columns.pop(column, None)
        for column in ("review", "reviewer", "review_time", "added")
    }
    # the detector the candidates came from (the detection widget's layer metadata)
    model = ((attributes.get("metadata") or {}).get("model") or {}).get("name")
    rows = []
    for i in range(n):
        measurements = {}
        for key, values in columns.items():
            value = values[i]
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                measurements[key] = float(value)
        name = str(names[i]) if names is not None and names[i] not in (None, "") else None
        properties: dict[str, Any] = {DETECTOR_KEY: Path(str(model)).name} if model else {}
        if review["review"] is not None:
            decision = str(review["review"][i] or "")
            name = QUPATH_CLASSES.get(decision, name)
            properties[REVIEW_KEY] = {
                "decision": decision,
                "reviewer": str((review["reviewer"] or [""] * n)[i] or ""),
                "time": str((review["review_time"] or [""] * n)[i] or ""),
                "added": bool((review["added"] or [False] * n)[i]),
            }
        rows.append((name, measurements, properties))
    return rows


def write_shapes_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A shapes layer as QuPath annotations (rectangles, polygons, ellipses, paths)."""
    types = attributes.get("shape_type") or ["polygon"] * len(data)
    rows = _feature_rows(attributes, len(data))
    annotations = [
        Annotation(
            _to_level0(shape, attributes),
            kind,
            name or attributes.get("name"),
            meas,
            properties=props,
        )
        for shape, kind, (name, meas, props) in zip(data, types, rows, strict=True)
    ]
    write_geojson(path, annotations)
    return [path]


def write_points_geojson(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """A points layer as QuPath point annotations."""
    coords = _to_level0(np.asarray(data).reshape(-1, np.asarray(data).shape[-1] or 2), attributes)
    rows = _feature_rows(attributes, len(coords))
    annotations = [
        Annotation(point[None], "point", name or attributes.get("name"), meas, properties=props)
        for point, (name, meas, props) in zip(coords, rows, strict=True)
    ]
    write_geojson(path, annotations)
    return [path]
