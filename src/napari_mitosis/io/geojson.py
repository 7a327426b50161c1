"""QuPath-compatible GeoJSON for annotations and detections, in slide level-0 pixels.

QuPath imports a FeatureCollection whose features carry ``objectType`` ("annotation" or
"detection"), a ``classification`` ({"name", "color"}) and ``measurements`` (name →
number). GeoJSON coordinates are (x, y); napari's are (y, x): this module is where the
order flips, once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from napari_mitosis.io.output_file import atomic_output

ShapeType = Literal["polygon", "rectangle", "ellipse", "path", "line", "point"]
ObjectType = Literal["annotation", "detection"]

#: The QuPath class of each decision of a mitosis review (`detection.review`); unreviewed
#: candidates are "Mitosis candidate". Kept here, the lowest stage, so that training data
#: readers know reviewed files too.
REVIEW_CLASSES = {
    "accepted": "Mitosis",
    "atypical": "Atypical mitosis",
    "rejected": "Non-mitotic figure",
    "unsure": "Unsure",
    "": "Mitosis candidate",
}


def candidate_class(name: str) -> str:
    """The QuPath class of a model's unreviewed output of class ``name``: what a detector
    calls a mitosis (ours "mitosis", MIDOG's "mitotic figure") is a "Mitosis candidate"
    until a reviewer accepts it ("Mitosis"), so a file never presents a machine call as a
    pathologist's decision."""
    if name.lower() in ("mitosis", "mitotic figure"):  # ours; MIDOG's
        return REVIEW_CLASSES[""]
    return name[:1].upper() + name[1:]


#: The feature property holding a review's decision, reviewer, time and "added".
REVIEW_KEY = "napari_mitosis_review"
#: The feature property naming the model and threshold behind each candidate
#: Feature property naming the detector that proposed a candidate.
DETECTOR_KEY = "detector"
#: classifier's measurement (``{"p_atypical": {"model": …, "threshold": …}}``).
CLASSIFIERS_KEY = "napari_mitosis_classifiers"
#: Properties this module reads into `Annotation` fields; others stay in ``properties``.
STANDARD_PROPERTIES = ("objectType", "classification", "measurements")
#: QuPath draws classes in these colours (RGB) when a file gives none.
DEFAULT_COLOURS = {
    "Mitosis": (220, 30, 30),
    "Atypical mitosis": (200, 50, 255),
    "Non-mitotic figure": (140, 140, 140),
    "Unsure": (30, 150, 255),
    "Mitosis candidate": (255, 215, 0),
    "Tumor": (200, 0, 0),
    "Tumour": (200, 0, 0),
}


@dataclass
class Annotation:
    """One region or point in level-0 pixel coordinates ``(y, x)``."""

    coords: np.ndarray  # (n, 2) vertices (y, x); a point has n == 1
    shape_type: ShapeType = "polygon"
    classification: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    object_type: ObjectType = "annotation"
    #: Further feature properties, kept as they are (QuPath ignores names it does not know).
    properties: dict[str, Any] = field(default_factory=dict)


def _ellipse_ring(corners: np.ndarray, n: int = 64) -> np.ndarray:
    """An ellipse given by napari's 4 bounding-box corners, as an n-gon (y, x)."""
    centre = corners.mean(axis=0)
    axis_a = (corners[1] - corners[0]) / 2  # half of one side
    axis_b = (corners[3] - corners[0]) / 2  # half of the adjacent side
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(theta) * axis_a + np.sin(theta) * axis_b


def _geometry(annotation: Annotation) -> dict[str, Any]:
    yx = np.asarray(annotation.coords, float).reshape(-1, 2)
    if not np.all(np.isfinite(yx)):
        raise ValueError("coordinates must be finite numbers")
    if annotation.shape_type == "point":
        return {"type": "Point", "coordinates": [float(yx[0, 1]), float(yx[0, 0])]}
    if annotation.shape_type == "ellipse":
        yx = _ellipse_ring(yx)
    xy = yx[:, ::-1].tolist()
    if annotation.shape_type in ("path", "line"):
        return {"type": "LineString", "coordinates": xy}
    if len(xy) < 3:
        raise ValueError(f"a {annotation.shape_type} needs at least 3 vertices, got {len(xy)}")
    return {"type": "Polygon", "coordinates": [[*xy, xy[0]]]}


def to_feature(annotation: Annotation) -> dict[str, Any]:
    """One GeoJSON Feature in QuPath's dialect."""
    properties: dict[str, Any] = {**annotation.properties, "objectType": annotation.object_type}
    if annotation.classification:
        name = annotation.classification
        colour = DEFAULT_COLOURS.get(name, (0, 120, 255))
        properties["classification"] = {"name": name, "color": list(colour)}
    if annotation.measurements:
        properties["measurements"] = {
            str(k): float(v) for k, v in annotation.measurements.items() if math.isfinite(float(v))
        }
    return {"type": "Feature", "geometry": _geometry(annotation), "properties": properties}


def write_geojson(
    path: str | Path, annotations: Iterable[Annotation], *, overwrite: bool = False
) -> Path:
    """Write annotations as a FeatureCollection QuPath opens, atomically."""
    collection = {"type": "FeatureCollection", "features": [to_feature(a) for a in annotations]}
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(collection, indent=1))
    return Path(path)


def _from_feature(path: Path, index: int, feature: Mapping[str, Any]) -> list[Annotation]:
    geometry = feature.get("geometry") or {}
    props = feature.get("properties") or {}
    kind = geometry.get("type")
    classification = props.get("classification")
    if isinstance(classification, Mapping):
        classification = classification.get("name")
    measurements = props.get("measurements") or {}
    if isinstance(measurements, Sequence):  # QuPath ≤0.3 wrote a list of {name, value}
        measurements = {m["name"]: m["value"] for m in measurements}
    common = {
        "classification": classification,
        "measurements": {k: float(v) for k, v in measurements.items() if v is not None},
        "object_type": "detection" if props.get("objectType") == "detection" else "annotation",
        "properties": {k: v for k, v in props.items() if k not in STANDARD_PROPERTIES},
    }
    coordinates = geometry.get("coordinates")
    if kind == "Point":
        return [Annotation(np.array([coordinates[::-1]], float), "point", **common)]
    if kind == "MultiPoint":
        return [Annotation(np.array([c[::-1]], float), "point", **common) for c in coordinates]
    if kind == "LineString":
        return [Annotation(np.array(coordinates, float)[:, ::-1], "path", **common)]
    if kind in ("Polygon", "MultiPolygon"):
        polygons = [coordinates] if kind == "Polygon" else coordinates
        # Exterior rings only: napari shapes cannot hold holes.
        return [
            Annotation(np.array(poly[0][:-1], float)[:, ::-1], "polygon", **common)
            for poly in polygons
        ]
    raise ValueError(f"{path}: feature {index} has unsupported geometry type {kind!r}")


def read_geojson(path: str | Path) -> list[Annotation]:
    """Read a GeoJSON FeatureCollection, Feature list or single Feature (QuPath export)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if isinstance(content, Mapping) and content.get("type") == "FeatureCollection":
        features = content.get("features", [])
    elif isinstance(content, Mapping) and content.get("type") == "Feature":
        features = [content]
    elif isinstance(content, list):
        features = content
    else:
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection or Feature")
    annotations: list[Annotation] = []
    for index, feature in enumerate(features):
        try:
            annotations.extend(_from_feature(path, index, feature))
        except (KeyError, TypeError, IndexError) as err:
            raise ValueError(f"{path}: feature {index} is malformed ({err!r})") from err
    return annotations
