"""Folders of high-power fields with annotations: the ICPR contest layouts and boxes.

ICPR 2012: ``A00_00.bmp`` beside ``A00_00.csv`` (pixel lists). ICPR 2014: ``A03_00Aa.tiff``
beside ``A03_00Aa.csv`` or ``A03_00Aa_mitosis.csv`` (centroids). Boxes for the detector:
``A00_00.boxes.csv`` (what ``convert-icpr2012`` and ``pseudo-masks`` write) or
``A00_00.geojson`` (QuPath rectangles/polygons, or a review saved by the review widget:
accepted and atypical figures are mitoses, rejected ones hard negatives, the rest left
out), or one COCO JSON for a whole folder.
Images without an annotation file are left out; an empty file is an image without
mitoses, which is a valid negative.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mitosis.io.detections import Detections, read_detections_csv
from napari_mitosis.io.formats import PLAIN_IMAGE_SUFFIXES, open_slide
from napari_mitosis.io.geojson import REVIEW_CLASSES, REVIEW_KEY, Annotation, read_geojson
from napari_mitosis.io.mitos_annotations import read_icpr2012_labels, read_icpr2014_centroids


@dataclass
class AnnotatedField:
    image_path: Path
    annotation_path: Path
    image: np.ndarray  # (h, w, 3) uint8
    mpp: tuple[float, float] | None
    #: (n, 2) (y, x) centres of reviewed look-alikes ("Non-mitotic figure"): hard negatives
    negatives: np.ndarray | None = None
    #: the image's domain (a COCO file's tumour type): validation holds out some of each
    group: str = ""


def _images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    images = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES and not p.stem.endswith(".mask")
    )
    if not images:
        raise ValueError(f"{folder}: holds no PNG/JPEG/BMP/TIFF images")
    return images


def _fields(
    folder: Path, suffixes: tuple[str, ...], annotations: Path | None = None
) -> Iterator[tuple[Path, Path]]:
    """(image, annotation file) pairs; annotations sit beside the images unless given."""
    where = Path(annotations) if annotations is not None else None
    if where is not None and not where.is_dir():
        raise FileNotFoundError(f"{where}: no such annotation folder")
    for image in _images(folder):
        for suffix in suffixes:
            candidate = (where or image.parent) / (image.stem + suffix)
            if candidate.exists():
                yield image, candidate
                break


def _rgb(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    slide = open_slide(path)
    pixels = np.asarray(slide.levels[0])
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"{path}: expected an RGB high-power field, got shape {pixels.shape}")
    return pixels, slide.mpp


def icpr2012_pairs(folder: str | Path) -> list[tuple[AnnotatedField, np.ndarray]]:
    """(field, label mask) for every image with an ICPR 2012 CSV beside it."""
    out = []
    for image_path, csv in _fields(Path(folder), (".csv",)):
        image, mpp = _rgb(image_path)
        labels = read_icpr2012_labels(csv, image.shape[:2])
        out.append((AnnotatedField(image_path, csv, image, mpp), labels))
    if not out:
        raise ValueError(f"{folder}: no image has an ICPR 2012 .csv beside it")
    return out


def icpr2014_fields(folder: str | Path) -> list[tuple[AnnotatedField, np.ndarray, np.ndarray]]:
    """(field, centroids (y, x), confidence) for every image with an ICPR 2014 CSV."""
    out = []
    for image_path, csv in _fields(Path(folder), ("_mitosis.csv", ".csv")):
        image, mpp = _rgb(image_path)
        centroids, confidence = read_icpr2014_centroids(csv, shape=image.shape[:2])
        out.append((AnnotatedField(image_path, csv, image, mpp), centroids, confidence))
    if not out:
        raise ValueError(f"{folder}: no image has an ICPR 2014 .csv beside it")
    return out


BOX_SUFFIXES = (".boxes.csv", ".geojson")
CENTROID_SUFFIXES = (".boxes.csv", ".geojson", "_mitosis.csv", ".csv")


def _is_mitosis(name: str | None) -> bool:
    """Unclassified features and classes named Mitosis… count; other classes (regions) do not."""
    return name is None or name.lower().startswith("mitos")


def checked_boxes(path: Path, boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boxes clipped to the image; a zero-area box or one wholly outside is an error."""
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    height, width = shape[:2]
    for number, (x0, y0, x1, y1) in enumerate(boxes, start=1):
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"{path}: box {number} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has no area")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise ValueError(
                f"{path}: box {number} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the "
                f"{width} × {height} image (coordinates of another image or level?)"
            )
    return np.clip(boxes, 0, [width, height, width, height])


#: Review classes that are mitoses (positives), and that are look-alikes (hard negatives).
REVIEWED_POSITIVE = (REVIEW_CLASSES["accepted"], REVIEW_CLASSES["atypical"])
REVIEWED_NEGATIVE = (REVIEW_CLASSES["rejected"],)
#: Side of the box around a reviewed point, in µm (MIDOG's figure box).
REVIEWED_BOX_UM = 12.0


def _is_reviewed(annotations: list[Annotation]) -> bool:
    """A review's file: a review property, or a class only a review gives."""
    reviewed = set(REVIEW_CLASSES.values()) - {REVIEW_CLASSES["accepted"], REVIEW_CLASSES[""]}
    return any(REVIEW_KEY in a.properties or a.classification in reviewed for a in annotations)


def reviewed_annotations(
    path: str | Path, shape: tuple[int, ...], mpp: tuple[float, float] | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """A reviewed GeoJSON as training data: (boxes xyxy of accepted and atypical mitoses,
    (y, x) centres of rejected look-alikes); unsure and unreviewed candidates are left out.
    Points become `REVIEWED_BOX_UM` boxes (0.25 µm/px when ``mpp`` is unknown). None when
    the file is not a review's."""
    path = Path(path)
    annotations = read_geojson(path)
    if not _is_reviewed(annotations):
        return None
    half = REVIEWED_BOX_UM / (mpp[1] if mpp else 0.25) / 2
    boxes, negatives = [], []
    for annotation in annotations:
        yx = annotation.coords.reshape(-1, 2)
        if annotation.classification in REVIEWED_NEGATIVE:
            negatives.append(yx.mean(axis=0))
        elif annotation.classification in REVIEWED_POSITIVE:
            if annotation.shape_type == "point":
                (y, x) = yx[0]
                boxes.append((x - half, y - half, x + half, y + half))
            else:
                (y0, x0), (y1, x1) = yx.min(axis=0), yx.max(axis=0)
                boxes.append((x0, y0, x1, y1))
    return checked_boxes(path, np.asarray(boxes), shape), np.asarray(negatives, float).reshape(
        -1, 2
    )


def read_boxes(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """(n, 4) xyxy pixel boxes from a boxes CSV or a GeoJSON of rectangles/polygons."""
    path = Path(path)
    if path.name.lower().endswith(".geojson"):
        reviewed = reviewed_annotations(path, shape)
        if reviewed is not None:
            return reviewed[0]
        boxes = []
        for number, annotation in enumerate(read_geojson(path), start=1):
            if not _is_mitosis(annotation.classification):
                continue
            if annotation.shape_type == "point":
                raise ValueError(
                    f"{path}: feature {number} is a point; the detector trains on boxes "
                    "(turn centroids into boxes with `napari-mitosis pseudo-masks`)"
                )
            (y0, x0), (y1, x1) = annotation.coords.min(axis=0), annotation.coords.max(axis=0)
            boxes.append((x0, y0, x1, y1))
        return checked_boxes(path, np.asarray(boxes), shape)
    return checked_boxes(path, read_detections_csv(path).boxes, shape)


def read_centroids(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """(n, 2) true centres (y, x): box centres, GeoJSON points/shape centres, or ICPR 2014."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".boxes.csv"):
        return Detections(read_boxes(path, shape)).centres
    if name.endswith(".geojson"):
        centres = [
            (a.coords.min(axis=0) + a.coords.max(axis=0)) / 2
            for a in read_geojson(path)
            if _is_mitosis(a.classification)
        ]
        return np.asarray(centres, float).reshape(-1, 2)
    return read_icpr2014_centroids(path, shape=shape[:2])[0]


def boxed_fields(
    folder: str | Path, annotations: str | Path | None = None
) -> list[tuple[AnnotatedField, np.ndarray]]:
    """(field, boxes xyxy) for every image with ``<stem>.boxes.csv`` or ``<stem>.geojson``."""
    out = []
    for image_path, boxes_path in _fields(Path(folder), BOX_SUFFIXES, annotations):
        image, mpp = _rgb(image_path)
        reviewed = None
        if boxes_path.name.lower().endswith(".geojson"):
            reviewed = reviewed_annotations(boxes_path, image.shape, mpp)
        if reviewed is not None:  # a review: its look-alikes are hard negatives
            boxes, negatives = reviewed
            out.append((AnnotatedField(image_path, boxes_path, image, mpp, negatives), boxes))
            continue
        boxes = read_boxes(boxes_path, image.shape)
        out.append((AnnotatedField(image_path, boxes_path, image, mpp), boxes))
    if not out:
        raise ValueError(
            f"{annotations or folder}: no image has a .boxes.csv or .geojson annotation beside it"
        )
    return out


def centroid_fields(
    folder: str | Path, annotations: str | Path | None = None
) -> list[tuple[AnnotatedField, np.ndarray]]:
    """(field, true centres (y, x)) from any annotation kind the package reads."""
    out = []
    for image_path, truth_path in _fields(Path(folder), CENTROID_SUFFIXES, annotations):
        image, mpp = _rgb(image_path)
        out.append(
            (
                AnnotatedField(image_path, truth_path, image, mpp),
                read_centroids(truth_path, image.shape),
            )
        )
    if not out:
        raise ValueError(f"{annotations or folder}: no image has an annotation file beside it")
    return out


def coco_fields(
    path: str | Path,
    images: str | Path | None = None,
    *,
    tumour_types: list[str] | None = None,
    box_format: str = "auto",
) -> list[tuple[AnnotatedField, np.ndarray]]:
    """(field, mitosis boxes xyxy) for every image a COCO detection JSON lists (MIDOG's
    too: `io.coco`); imposters ("not mitotic figure") are the field's hard negatives and
    its tumour type is the field's ``group``. Images are looked up under ``images``
    (default: the JSON's folder); an image with no annotation is a negative. Images the
    file lists but the folder lacks are named, all of them, rather than skipped."""
    from napari_mitosis.io.coco import missing_images, read_coco

    database = read_coco(path, box_format).select(tumour_types)  # type: ignore[arg-type]
    root = Path(images) if images is not None else Path(path).parent
    missing = missing_images(database, root)
    if missing:
        shown = ", ".join(missing[:10]) + (
            f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        )
        raise FileNotFoundError(
            f"{path}: {len(missing)} of its {len(database.images)} images are not in {root}: "
            f"{shown} (--tumour-type keeps only some types)"
        )
    out = []
    for entry in database.images:
        image_path = root / entry.file_name
        image, mpp = _rgb(image_path)
        imposters = entry.imposters
        centres = np.c_[imposters[:, 1] + imposters[:, 3], imposters[:, 0] + imposters[:, 2]] / 2
        field = AnnotatedField(
            image_path, Path(path), image, mpp, centres.reshape(-1, 2), entry.tumour_type
        )
        out.append((field, checked_boxes(Path(path), entry.mitoses, image.shape)))
    return out
