"""The viewer's camera and scale bar across napari versions, through public API only.

napari 0.9 moved them under ``viewer.scene`` / ``viewer.canvas`` and deprecated the old
attributes; reading them here keeps our modules free of its DeprecationWarning on 0.9
and working on 0.6–0.8.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def camera(viewer: Any) -> Any:
    """The viewer's camera model (``viewer.scene.camera`` from napari 0.9)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def scale_bar(viewer: Any) -> Any:
    """The viewer's scale-bar overlay (``viewer.canvas.overlays`` from napari 0.9)."""
    canvas = getattr(viewer, "canvas", None)
    overlays = getattr(canvas, "overlays", None)
    return overlays["scale_bar"] if overlays is not None else viewer.scale_bar


def canvas_width_px(widget: Any) -> int:
    """The width in screen pixels of the central area (canvas and sliders) of the window
    holding ``widget`` (a magicgui widget), read through Qt's public API; 800 before the
    window is shown."""
    window = widget.native.window()
    central = window.centralWidget() if hasattr(window, "centralWidget") else None
    width = central.width() if central is not None else 0
    return width if width > 100 else 800


def rectangle(centre_yx: tuple[float, float], half_yx: tuple[float, float]) -> np.ndarray:
    """The four (y, x) corners of an axis-aligned rectangle, as a shapes layer takes one."""
    (cy, cx), (hy, hx) = centre_yx, half_yx
    return np.array(
        [[cy - hy, cx - hx], [cy - hy, cx + hx], [cy + hy, cx + hx], [cy + hy, cx - hx]]
    )


def synthetic_warning(notes: str, image: Any) -> str:
    """What to say when a model whose card ``notes`` say it learnt from synthetic images
    meets a real slide (one our reader opened that is not a synthetic sample); ""
    otherwise, also when the image's origin is unknown."""
    from napari_mitosis.io.slide import is_synthetic

    metadata = getattr(image, "metadata", None) or {}
    if "synthetic" not in notes.lower() or "path" not in metadata or is_synthetic(metadata):
        return ""
    return (
        f"this model was trained on synthetic images; on the real slide {image.name} its "
        "output is a demonstration, not a count to report"
    )


def candidate_source(layer: Any, image: Any) -> str:
    """Which model made a candidates layer and what it was trained on (from the layer's
    metadata, as the detection widget writes it), with `synthetic_warning`."""
    model = (getattr(layer, "metadata", None) or {}).get("model") or {}
    if not model:
        return ""
    notes = str(model.get("notes", ""))
    line = f"candidates from {model.get('name', 'a model')}; trained on: {notes or 'not recorded'}"
    warning = synthetic_warning(notes, image)
    return f"{line}\n⚠ {warning}" if warning else line


def hotspot_layer(viewer: Any, layer: Any, image: Any, grading: dict, mpp: Any) -> Any:
    """The 10-HPF hotspot of ``grading`` as a blue square in its own shapes layer on
    ``image``: ``layer`` moved (only when it moved) or, when gone, a new one."""
    if grading.get("hotspot_centre_y") is None or mpp is None:
        return layer
    side = grading["hotspot_side_um"]
    half = (side / mpp[0] / 2, side / mpp[1] / 2)
    box = rectangle((grading["hotspot_centre_y"], grading["hotspot_centre_x"]), half)
    if layer is None or layer not in viewer.layers:
        return viewer.add_shapes(
            [box],
            shape_type="rectangle",
            name=f"{image.name} hotspot (10 HPF)",
            edge_color="#2060ff",
            face_color="transparent",
            edge_width=max(half) / 40,
            scale=image.scale[-2:],
            translate=image.translate[-2:],
            units=image.units,
        )
    if not np.allclose(np.asarray(layer.data[0]), box):
        layer.data = [box]
    return layer
