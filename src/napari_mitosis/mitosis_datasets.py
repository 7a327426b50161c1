"""Folders of high-power fields with annotations, in the ICPR contest layouts.

ICPR 2012: ``A00_00.bmp`` beside ``A00_00.csv`` (pixel lists). ICPR 2014: ``A03_00Aa.tiff``
beside ``A03_00Aa.csv`` or ``A03_00Aa_mitosis.csv`` (centroids). Images without a CSV are
left out and named; an empty CSV is an image without mitoses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mitosis.mitos_annotations import read_icpr2012_labels, read_icpr2014_centroids
from napari_mitosis.slide import PLAIN_IMAGE_SUFFIXES, open_slide


@dataclass
class AnnotatedField:
    image_path: Path
    annotation_path: Path
    image: np.ndarray  # (h, w, 3) uint8
    mpp: tuple[float, float] | None


def _fields(folder: Path, suffixes: tuple[str, ...]) -> Iterator[tuple[Path, Path]]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES)
    if not images:
        raise ValueError(f"{folder}: holds no PNG/JPEG/BMP/TIFF images")
    for image in images:
        for suffix in suffixes:
            csv = image.with_name(image.stem + suffix)
            if csv.exists():
                yield image, csv
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
