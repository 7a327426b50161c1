"""The viewer's camera and scale bar across napari versions, through public API only.

napari 0.9 moved them under ``viewer.scene`` / ``viewer.canvas`` and deprecated the old
attributes; reading them here keeps our modules free of its DeprecationWarning on 0.9
and working on 0.6–0.8.
"""

from __future__ import annotations

from typing import Any


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
