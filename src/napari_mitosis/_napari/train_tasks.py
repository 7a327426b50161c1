"""What each task of the Train widget takes from the canvas, and the command it runs.

Every task turns layers into files the command line reads — QuPath GeoJSON in level-0
pixels, or a labels TIFF — and runs that command, so the widget's model is exactly the
command line's for the same data and seed:

- **mitosis detector** (``train-detector``): a points or shapes layer of figures; a
  review's layer keeps its decisions (rejected candidates become hard negatives).
- **tissue classifier** (``train-classifier``): a shapes layer of regions, each named by
  its ``class``/``classification`` feature (or the class typed in the widget), or a
  labels layer (label k is the k-th class: the layer's ``class`` feature, or the names
  typed in the widget, comma-separated). One class trains tumour against the rest of the
  tissue; more train a K-class model.
- **mitosis segmentation (U-Net)** (``train-unet``): a shapes layer of figure outlines,
  or a labels layer (non-zero: mitosis).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_mitosis.io.geojson import REVIEW_CLASSES, REVIEW_KEY, Annotation, write_geojson

#: "step 50/300: loss 0.812  validation F1 0.400" or "epoch 2/30: loss 0.3  validation AUC 0.9"
PROGRESS_LINE = re.compile(
    r"^(?:step|epoch) (\d+)/(\d+): loss ([\d.naif]+)\s+validation (\w+) ([\d.naif]+)"
)


@dataclass(frozen=True)
class Task:
    name: str  # as the widget lists it
    command: str  # the CLI sub-command
    kind: str  # the registry's task, for "start from" and the widget that runs it
    layers: tuple[str, ...]  # napari layer types the annotations may come from
    unit: str  # "steps" or "epochs"
    runs_in: str  # display name of the widget that runs the trained model
    model_name: str  # default registered name


TASKS = (
    Task("mitosis detector", "train-detector", "detection", ("Points", "Shapes"), "steps",
         "Mitosis detection", "my-detector"),
    Task("tissue classifier", "train-classifier", "classification", ("Shapes", "Labels"),
         "epochs", "Tumour classification", "my-classifier"),
    Task("mitosis segmentation (U-Net)", "train-unet", "segmentation", ("Shapes", "Labels"),
         "steps", "Mitosis segmentation", "my-unet"),
)  # fmt: skip


def task(name: str) -> Task:
    return next(t for t in TASKS if t.name == name)


def _in_slide_pixels(image: Any, layer: Any, vertices: np.ndarray) -> np.ndarray:
    world = np.asarray([layer.data_to_world(v) for v in np.asarray(vertices)])
    return np.asarray([image.world_to_data(w) for w in world])[:, -2:]


def _class_column(layer: Any) -> str | None:
    features = layer.features
    if not len(features):
        return None
    return next((c for c in ("classification", "class") if c in features), None)


def layer_annotations(image: Any, marks: Any, class_name: str = "") -> list[Annotation]:
    """A points or shapes layer as level-0 pixel mitoses of ``image``'s slide.

    A review's layer (a ``decision`` feature) keeps its decisions, so rejected candidates
    become hard negatives; otherwise every mark is a mitosis, or with ``class_name`` only
    those whose ``class``/``classification`` feature is that class."""
    features = marks.features
    decisions = None
    if len(features) and "decision" in features:
        decisions = [str(d) if isinstance(d, str) else "" for d in features["decision"]]
    column = _class_column(marks)
    shapes = (
        marks.data if hasattr(marks, "shape_type") else [np.asarray(p)[None] for p in marks.data]
    )
    out = []
    for index, vertices in enumerate(shapes):
        if column is not None and class_name and str(features[column].iloc[index]) != class_name:
            continue
        pixels = _in_slide_pixels(image, marks, vertices)
        point = len(pixels) == 1
        properties: dict[str, Any] = {}
        classification = "Mitosis"
        if decisions is not None:
            classification = REVIEW_CLASSES.get(decisions[index], REVIEW_CLASSES[""])
            properties = {REVIEW_KEY: {"decision": decisions[index]}}
        out.append(
            Annotation(
                pixels if not point else pixels[:1],
                "point" if point else "rectangle",
                classification,
                properties=properties,
            )
        )
    return out


def layer_regions(image: Any, shapes: Any, default: str) -> list[Annotation]:
    """A shapes layer's regions as level-0 pixel polygons (and ellipses), each named by
    its class feature, else ``default``; lines and paths are not regions."""
    column = _class_column(shapes)
    out = []
    for index, vertices in enumerate(shapes.data):
        kind = shapes.shape_type[index]
        if kind in ("line", "path") or len(vertices) < 3:
            continue
        name = default
        if column is not None:
            value = shapes.features[column].iloc[index]
            name = str(value) if isinstance(value, str) and value else default
        # an ellipse stays its 4 corners: the GeoJSON writer traces it, rotated or not
        shape = "ellipse" if kind == "ellipse" else "polygon"
        out.append(Annotation(_in_slide_pixels(image, shapes, vertices), shape, name))
    return out


def labels_data(labels: Any) -> np.ndarray:
    """A labels layer's full-resolution array."""
    return np.asarray(labels.data[0] if labels.multiscale else labels.data)


def label_names(labels: Any, typed: str) -> dict[int, str]:
    """Label value → class name: the layer's ``class`` feature (by its ``index`` column,
    else by row), the names typed (comma-separated, label 1 first), or "class k"."""
    values = [int(v) for v in np.unique(labels_data(labels)) if v > 0]
    features = labels.features
    names: dict[int, str] = {}
    if len(features) and "class" in features:
        index = features["index"] if "index" in features else range(len(features))
        names = {int(i): str(c) for i, c in zip(index, features["class"], strict=True)}
    typed_names = [n.strip() for n in typed.split(",") if n.strip()]
    return {
        v: names.get(v) or (typed_names[v - 1] if v <= len(typed_names) else f"class {v}")
        for v in values
    }


def labels_on_slide(image: Any, labels: Any, *, full: bool) -> np.ndarray:
    """A labels layer as an array over the whole slide: at the layer's own resolution, or
    (``full``) resampled to the slide's level-0 pixels. The layer must cover the slide."""
    data = labels_data(labels)
    if data.ndim != 2:
        raise ValueError(f"{labels.name}: a 2-D labels layer is needed, not {data.ndim}-D")
    height, width = image.level_shapes[0][-2:] if image.multiscale else image.data.shape[:2]
    # the layer's outer pixel edges, in slide pixels, against the slide's own
    edges = np.array([[-0.5, -0.5], [data.shape[0] - 0.5, data.shape[1] - 0.5]])
    corners = _in_slide_pixels(image, labels, edges)
    tolerance = 1.5 * max(height / data.shape[0], width / data.shape[1])  # a layer pixel
    if np.abs(corners - [[-0.5, -0.5], [height - 0.5, width - 0.5]]).max() > tolerance:
        raise ValueError(
            f"{labels.name}: does not cover {image.name} ({data.shape[1]} × {data.shape[0]} "
            f"labels over a {width} × {height} px slide); add the labels layer over the slide"
        )
    if not full or data.shape == (height, width):
        return data
    rows = np.minimum((np.arange(height) * data.shape[0]) // height, data.shape[0] - 1)
    cols = np.minimum((np.arange(width) * data.shape[1]) // width, data.shape[1] - 1)
    return data[rows[:, None], cols[None, :]]


def write_labels_tiff(path: Path, labels: np.ndarray) -> Path:
    """A labels array as our lossless pyramidal labels TIFF (written atomically;
    nearest-neighbour levels, so a reader takes a small level without mixing labels)."""
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff

    dtype = np.uint8 if labels.max() < 256 else np.uint16
    return write_pyramid_tiff(path, labels.astype(dtype), layer_type="labels")


@dataclass
class Examples:
    """What a task found on the canvas: the annotation file to write, the classes to
    name on the command line, and a count per class for the widget to show."""

    counts: dict[str, int]
    unit: str  # "figures", "regions", "px"
    write: Any  # (folder) -> annotation file
    classes: tuple[str, ...] = ()

    def describe(self) -> str:
        parts = [f"{n} {c}" for c, n in self.counts.items()]
        return (", ".join(parts) + f" ({self.unit})") if parts else f"no {self.unit}"


def examples(chosen: Task, image: Any, layer: Any, class_name: str) -> Examples:
    """The examples ``layer`` gives ``chosen`` on ``image``."""
    if chosen.command == "train-detector":
        marks = layer_annotations(image, layer, class_name)
        counts = Counter(a.classification or "Mitosis" for a in marks)
        return Examples(dict(sorted(counts.items())), "figures", _geojson(layer, marks))
    if type(layer).__name__ == "Labels":
        names = label_names(layer, class_name)
        if chosen.command == "train-unet":  # each label one figure, at the slide's pixels

            def write(folder: Path) -> Path:
                labels = labels_on_slide(image, layer, full=True)
                return write_labels_tiff(folder / f"{layer.name}.labels.tif", labels)

            return Examples({"Mitosis": len(names)}, "figures", write)
        data = labels_data(layer)
        area = np.bincount(data.ravel(), minlength=max(names, default=0) + 1)
        values = sorted(names)
        return Examples(
            {names[v]: int(area[v]) for v in values},
            "px",
            lambda folder: _write_classes(folder, image, layer, names),
            tuple(names[v] for v in values),
        )
    if chosen.command == "train-unet":
        outlines = [
            a
            for a in layer_regions(image, layer, "Mitosis")
            if a.classification.lower().startswith("mitos")
        ]
        return Examples({"Mitosis": len(outlines)}, "figures", _geojson(layer, outlines))
    regions = layer_regions(image, layer, class_name or "Tumour")
    counts = Counter(a.classification for a in regions)
    classes = tuple(counts) if len(counts) > 1 else ()
    if not classes:  # one class: tumour against the rest of the tissue
        regions = [replace(a, classification=None) for a in regions]
    return Examples(dict(counts), "regions", _geojson(layer, regions), classes)


def _geojson(layer: Any, annotations: list[Annotation]) -> Any:
    """What writes these annotations, as the layer's GeoJSON, into a folder."""
    return lambda folder: write_geojson(folder / f"{layer.name}.geojson", annotations)


def _write_classes(folder: Path, image: Any, layer: Any, names: dict[int, str]) -> Path:
    """Label values renumbered 1…K in class order (a gap-free labels image)."""
    data = labels_on_slide(image, layer, full=False)
    lookup = np.zeros(int(data.max()) + 1, np.int32)
    for k, value in enumerate(sorted(names), start=1):
        lookup[value] = k
    return write_labels_tiff(folder / f"{layer.name}.labels.tif", lookup[data])


def command(
    chosen: Task,
    slide: Path,
    annotations: Path,
    out: Path,
    *,
    classes: tuple[str, ...],
    length: int,
    eval_every: int,
    size: int,
    device: str,
    notes: str,
    recipe: str | None,
    init: str | None,
) -> list[str]:
    """The command line a task runs (the CLI, exactly)."""
    import sys

    line = [
        sys.executable, "-m", "napari_mitosis", chosen.command, str(slide),
        "--annotations", str(annotations), "--out", str(out), "--device", device,
        "--notes", notes, f"--{chosen.unit}", str(length),
    ]  # fmt: skip
    if chosen.command == "train-classifier":
        line += ["--classes", *classes] if classes else []
        line += [] if init else ["--input-size", str(size)]
    else:
        line += ["--eval-every", str(eval_every), "--crop", str(size)]
    if recipe:
        line += ["--recipe", recipe]
    if init:
        line += ["--init", init]
    return line
