"""Candidates from any file a detector or reviewer wrote — QuPath GeoJSON, our CSV, MIDOG
points JSON — and back, with new probability columns and nothing else changed.

A GeoJSON's features keep their geometry, class, ids, review decision and other
properties; each gains measurements (``p_atypical`` …) and, under `CLASSIFIERS_KEY`, the
model and threshold behind each. A CSV or MIDOG file becomes boxes with extra columns.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from napari_mitosis.detection.candidates import CandidateScores, with_scores
from napari_mitosis.io.detections import Detections, read_detections_csv, write_detections_csv
from napari_mitosis.io.geojson import CLASSIFIERS_KEY, Annotation, read_geojson, write_geojson
from napari_mitosis.io.midog_points import (
    BOX_UM,
    midog_names,
    read_midog_points,
    write_midog_points,
)

#: What `read_candidates` takes, by how the file name ends.
KINDS = {".geojson": "geojson", ".json": "midog", ".csv": "csv"}


@dataclass
class CandidateFile:
    """Candidates as read: their level-0 ``(y, x)`` centres and boxes, and for GeoJSON the
    features themselves."""

    path: Path
    detections: Detections
    annotations: list[Annotation] | None = None  # GeoJSON: kept as they came
    detector: str | None = None  # the model that proposed them, written with each one

    @property
    def centres(self) -> np.ndarray:
        return self.detections.centres

    def scored(self, scores: CandidateScores, *, drop_unverified: bool = False) -> CandidateFile:
        """A copy with the probability columns; ``drop_unverified`` drops those the
        verifier rejects (from the features too)."""
        found = with_scores(self.detections, scores)
        keep = scores.verified()
        keep = np.ones(len(found), bool) if keep is None or not drop_unverified else keep
        annotations = None
        if self.annotations is not None:
            annotations = []
            for i, a in enumerate(self.annotations):
                if not keep[i]:
                    continue
                measured = {**a.measurements, **{k: float(v[i]) for k, v in scores.columns.items()}}
                properties = {**a.properties, CLASSIFIERS_KEY: scores.models}
                annotations.append(replace(a, measurements=measured, properties=properties))
        return CandidateFile(self.path, found.subset(keep), annotations, self.detector)

    def write(
        self,
        folder: Path,
        stem: str,
        *,
        midog_json: bool = False,
        atypical_threshold: float | None = None,
        overwrite: bool = False,
    ) -> list[Path]:
        """``<stem>.mitoses.geojson`` and ``.csv`` (and ``.mitotic-figures.json``)."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = output_paths(folder, stem, midog_json=midog_json)
        annotations = self.annotations
        if annotations is None:
            annotations = self.detections.to_annotations(self.detector)
        write_geojson(paths[0], annotations, overwrite=overwrite)
        write_detections_csv(paths[1], self.detections, overwrite=overwrite)
        if midog_json:
            names = midog_names(self.detections, atypical_threshold)
            write_midog_points(paths[2], self.detections, names=names, overwrite=overwrite)
        return paths


def output_paths(folder: Path, stem: str, *, midog_json: bool = False) -> list[Path]:
    """Where candidates of an image go: GeoJSON, CSV, and the MIDOG points JSON if asked."""
    endings = (".mitoses.geojson", ".mitoses.csv") + ((".mitotic-figures.json",) * midog_json)
    return [folder / f"{stem}{e}" for e in endings]


def _box_of(annotation: Annotation, half: float) -> tuple[float, float, float, float]:
    yx = np.asarray(annotation.coords, float).reshape(-1, 2)
    if len(yx) == 1:  # a point: a figure-sized box around it
        (y, x), h = yx[0], half
        return x - h, y - h, x + h, y + h
    return yx[:, 1].min(), yx[:, 0].min(), yx[:, 1].max(), yx[:, 0].max()


def read_candidates(path: str | Path, *, mpp: tuple[float, float] | None = None) -> CandidateFile:
    """Candidates from GeoJSON (points or boxes), CSV or MIDOG points JSON (mm when the
    image's ``mpp`` is known). An unknown kind or a malformed file is named."""
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{path}: candidates come as .geojson (QuPath), .csv (ours) or .json (MIDOG points)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such candidates file")
    if kind == "csv":
        return CandidateFile(path, read_detections_csv(path, mpp=mpp))
    if kind == "midog":
        return CandidateFile(path, read_midog_points(path, mpp=mpp))
    annotations = read_geojson(path)
    half = BOX_UM / (mpp[1] if mpp else 0.25) / 2
    boxes = np.array([_box_of(a, half) for a in annotations], float).reshape(-1, 4)
    scores = np.array([a.measurements.get("score", 1.0) for a in annotations], float)
    classes = [a.classification or "Mitosis candidate" for a in annotations]
    measured = {
        k: np.array([a.measurements.get(k, np.nan) for a in annotations], float)
        for k in sorted({k for a in annotations for k in a.measurements if k.startswith("p_")})
    }
    return CandidateFile(path, Detections(boxes, scores, classes, mpp, measured), annotations)
