"""Mitosis segmentation widget: converts layers ↔ `napari_mitosis.segmentation.run` calls."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import FloatSpinBox, SpinBox

from napari_mitosis._napari.tiled_widget import TiledModelWidget

if TYPE_CHECKING:
    import napari


class SegmentationWidget(TiledModelWidget):
    """Pick an RGB image layer and a U-Net checkpoint; get probability and labels layers."""

    task = "segmentation"
    model_label = "U-Net"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.tile = SpinBox(label="tile (px)", value=256, min=32, max=2048, step=32)
        self.threshold = FloatSpinBox(
            label="threshold (0 = model's)", value=0.0, min=0.0, max=1.0, step=0.05
        )
        super().__init__(viewer, [self.tile, self.threshold])

    def _make_predictor(self, model: Any, card: Any, device: str) -> Any:
        from napari_mitosis.engine.tiled_inference import TilePredictor

        return TilePredictor(model, card, device)

    def _make_run(self, data: Any, predictor: Any, **where: Any) -> Any:
        from napari_mitosis.segmentation.run import SegmentationRun

        return SegmentationRun(data, predictor, tile=self.tile.value, **where)

    def _finish(self, layer: Any, run: Any) -> Any:
        return run.result(self.threshold.value or None)

    def _on_done(self, layer: Any, result: Any) -> None:
        scale = np.asarray(layer.scale[-2:]) * result.downsample
        y0, x0 = result.region[:2]
        translate = np.asarray(layer.translate[-2:]) + np.array([y0, x0]) * scale
        meta = {
            "mpp": list(result.level_mpp) if result.level_mpp else None,
            "region_yx": list(result.region),
            "level": result.level,
        }
        common = {"scale": scale, "translate": translate, "units": layer.units, "metadata": meta}
        self.viewer.add_image(
            np.asarray(result.probability),
            name=f"{layer.name} mitosis probability",
            colormap="magma",
            opacity=0.5,
            blending="additive",
            contrast_limits=(0, 1),
            **common,
        )
        self.viewer.add_labels(result.labels, name=f"{layer.name} mitoses", **common)
        self.status.value = f"{len(result.detections)} mitotic figures"
