"""Tumour classification widget: converts layers ↔ `napari_mitosis.classification.run` calls.

The heatmap has one value per cell (``stride`` level pixels); its layer gets scale =
cell size in µm and a translation that puts each value over the centre of its cell, so it
lines up with the slide at every zoom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, FloatSpinBox, SpinBox

from napari_mitosis._napari.tiled_widget import TiledModelWidget

if TYPE_CHECKING:
    import napari


def cell_geometry(layer: Any, origin0: tuple[float, float], cell0: float) -> dict[str, Any]:
    """napari scale/translate of a grid whose cells are ``cell0`` level-0 px from
    ``origin0`` over an image layer whose data are level-0 pixels."""
    scale0 = np.asarray(layer.scale[-2:], float)
    centre = np.asarray(origin0, float) + cell0 / 2 - 0.5  # level-0 pixel-centre coordinates
    return {
        "scale": scale0 * cell0,
        "translate": np.asarray(layer.translate[-2:], float) + centre * scale0,
        "units": layer.units,
    }


class ClassificationWidget(TiledModelWidget):
    """Pick an RGB image layer and a classifier checkpoint; get a tumour heatmap and mask."""

    task = "classification"
    model_label = "classifier"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.stride = SpinBox(label="stride (px, 0 = patch/2)", value=0, min=0, max=4096)
        self.min_tissue_fraction = FloatSpinBox(
            label="min tissue fraction", value=0.3, min=0.0, max=1.0, step=0.05
        )
        self.threshold = FloatSpinBox(
            label="threshold (0 = model's)", value=0.0, min=0.0, max=1.0, step=0.05
        )
        self.batch_size = SpinBox(label="batch size", value=16, min=1, max=1024)
        self.tta = CheckBox(label="test-time augmentation (8 flips/rotations)", value=False)
        self.show_tissue = CheckBox(label="add the tissue mask", value=False)
        super().__init__(
            viewer,
            [
                self.stride,
                self.min_tissue_fraction,
                self.threshold,
                self.batch_size,
                self.tta,
                self.show_tissue,
            ],
        )
        self.overlap.visible = False  # classifiers tile by stride

    def _min_tissue(self) -> float:
        return float(self.min_tissue_fraction.value)

    def _make_predictor(self, model: Any, card: Any, device: str) -> Any:
        from napari_mitosis.classification.run import ClassifierPredictor

        return ClassifierPredictor(model, card, device)

    def _make_run(self, data: Any, predictor: Any, **where: Any) -> Any:
        from napari_mitosis.classification.run import ClassificationRun

        where.pop("overlap")
        predictor.tta = bool(self.tta.value)
        return ClassificationRun(
            data,
            predictor,
            stride=self.stride.value or None,
            batch_size=self.batch_size.value,
            **where,
        )

    def _finish(self, layer: Any, run: Any) -> Any:
        return run.result(self.threshold.value or None)

    def _on_done(self, layer: Any, result: Any) -> None:
        geometry = cell_geometry(layer, result.origin_level0, result.cell_level0)
        meta = {
            "mpp": list(result.mpp) if result.mpp else None,
            "origin_level0_yx": list(result.origin_level0),
            "cell_level0_px": result.cell_level0,
            "threshold": result.threshold,
        }
        self.viewer.add_image(
            np.asarray(result.heatmap),
            name=f"{layer.name} tumour probability",
            colormap="inferno",
            opacity=0.5,
            contrast_limits=(0, 1),
            metadata=meta,
            **geometry,
        )
        self.viewer.add_labels(
            result.mask, name=f"{layer.name} tumour mask", opacity=0.4, metadata=meta, **geometry
        )
        if self.show_tissue.value and self.tissue is not None:
            ds = self.tissue.downsample
            self.viewer.add_labels(
                self.tissue.mask.astype(np.uint8),
                name=f"{layer.name} tissue",
                opacity=0.25,
                **cell_geometry(layer, (0.0, 0.0), ds[0]),
            )
        area = result.tumour_area_mm2()
        text = f"tumour: {int(result.mask.sum())} of {int(result.visited.sum())} cells"
        if area is not None:
            text += f" = {area:.3f} mm²"
        self.status.value = text
