"""The MIDOG challenges' points JSON (grand-challenge "Multiple points"): one point per
candidate, in millimetres of the image when its µm/pixel is known (pixels otherwise, as
the MIDOG 2025 reference writes them), with a ``name`` and a ``probability``.

The challenges' evaluation reads ``name`` ("mitotic figure"; the MIDOG 2025 atypical track
adds "atypical mitotic figure"; "non-mitotic figure" for imposters), ``point`` ``[x, y, 0]``
and ``probability``; nothing else goes in a point, so a file we write is one their
evaluation container takes as it is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_mitosis.io.detections import Detections
from napari_mitosis.io.output_file import atomic_output

#: Names the MIDOG evaluation knows.
MITOTIC, ATYPICAL, IMPOSTER = "mitotic figure", "atypical mitotic figure", "non-mitotic figure"
#: Side (µm) of the box a point becomes when read (MIDOG's figure boxes are 50 px at 0.25).
BOX_UM = 12.0


def midog_names(detections: Detections, atypical_threshold: float | None = None) -> list[str]:
    """A point name per candidate: "atypical mitotic figure" where ``p_atypical`` reaches
    ``atypical_threshold`` (the subtyping classifier's), "mitotic figure" otherwise."""
    p = detections.measurements.get("p_atypical")
    if p is None or atypical_threshold is None:
        return [MITOTIC] * len(detections)
    return [ATYPICAL if v >= atypical_threshold else MITOTIC for v in p]


def write_midog_points(
    path: str | Path,
    detections: Detections,
    *,
    names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Box centres as MIDOG points: mm when ``detections.mpp`` is known, else pixels."""
    names = list(names) if names is not None else [MITOTIC] * len(detections)
    if len(names) != len(detections):
        raise ValueError(f"{len(detections)} candidates but {len(names)} names")
    centres = detections.centres  # (y, x) level-0 px
    my, mx = (m / 1000 for m in detections.mpp) if detections.mpp else (1.0, 1.0)
    points = [
        {"name": name, "point": [float(x * mx), float(y * my), 0.0], "probability": float(p)}
        for (y, x), p, name in zip(centres, detections.scores, names, strict=True)
    ]
    content = {
        "name": "Points of interest",
        "type": "Multiple points",
        "points": points,
        "version": {"major": 1, "minor": 0},
    }
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(content, indent=1))
    return Path(path)


def read_midog_points(
    path: str | Path, *, mpp: tuple[float, float] | None = None, box_um: float = BOX_UM
) -> Detections:
    """MIDOG points as ``box_um`` boxes in level-0 pixels: coordinates are millimetres
    when ``mpp`` (the image's µm/pixel) is given, pixels otherwise. The point's name
    becomes the class, its probability the score."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        points = content["points"]
        xy = np.array([p["point"][:2] for p in points], float).reshape(-1, 2)
        scores = np.array([p.get("probability", 1.0) for p in points], float)
        names = [str(p.get("name", MITOTIC)) for p in points]
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise ValueError(
            f"{path}: not a MIDOG points file (a 'points' list of {{name, point: [x, y, z], "
            f"probability}}): {err!r}"
        ) from err
    if mpp is not None:
        xy = xy * 1000 / np.array([mpp[1], mpp[0]])
    half = box_um / (mpp[1] if mpp else 0.25) / 2
    boxes = np.concatenate([xy - half, xy + half], axis=1)
    return Detections(boxes, scores, names, mpp)
