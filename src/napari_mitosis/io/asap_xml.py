"""ASAP / Camelyon16 annotation XML: polygons in level-0 pixels, classified by group."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from napari_mitosis.io.geojson import Annotation


def read_asap_xml(path: str | Path) -> list[Annotation]:
    """Camelyon16 / ASAP annotation XML → polygons (level-0 px) classified by group."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{path}: not valid ASAP XML ({err})") from err
    out = []
    for number, node in enumerate(root.iter("Annotation"), start=1):
        points = sorted(node.iter("Coordinate"), key=lambda c: float(c.get("Order", 0)))
        try:
            yx = np.array([(float(c.get("Y")), float(c.get("X"))) for c in points])
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: annotation {number} has a bad coordinate ({err})") from err
        if len(yx) >= 3:
            out.append(Annotation(yx, "polygon", node.get("PartOfGroup") or node.get("Name")))
    return out
