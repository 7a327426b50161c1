"""napari sample: a synthetic H&E slide with mitoses at known places, generated on demand."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from napari_mitosis._napari.reader import slide_layer_data
from napari_mitosis.io.formats import open_slide
from napari_mitosis.samples.synthetic import ensure_sample_slide


def make_sample_slide() -> list[tuple[Any, dict[str, Any], str]]:
    """The sample slide (written once to the temp folder) and its true mitoses as points."""
    truth = ensure_sample_slide(Path(tempfile.gettempdir()) / "napari-mitosis-samples")
    slide = open_slide(truth.path)
    image = slide_layer_data(slide, name="synthetic H&E")
    points = (
        truth.mitoses,
        {
            "name": "true mitoses",
            "scale": slide.scale(),
            "units": slide.units(),
            "features": {"classification": ["Mitosis"] * len(truth.mitoses)},
            "metadata": {"mpp": list(slide.scale()), "coordinates": "level-0 pixels (y, x)"},
            "symbol": "ring",
            "size": 2 * truth.mitosis_radius_px * 1.6,
            "border_color": "lime",
            "face_color": "transparent",
        },
        "points",
    )
    return [image, points] if len(truth.mitoses) else [image]
