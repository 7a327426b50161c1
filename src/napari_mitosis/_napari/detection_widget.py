"""Mitosis detection widget: converts layers ↔ `napari_mitosis.detection.run` calls.

Boxes come back in level-0 pixels, so the new layer takes the image layer's own scale and
translation and lines up at every zoom; each shape's score and class are layer features
(QuPath GeoJSON export keeps them as measurements).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox

from napari_mitosis._napari.tiled_widget import TiledModelWidget

if TYPE_CHECKING:
    import napari

OUTPUTS = ("rectangles (shapes)", "centres (points)")


class DetectionWidget(TiledModelWidget):
    """Pick an RGB image layer and a detector checkpoint; get scored boxes and a density."""

    task = "detection"
    model_label = "detector"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.threshold = FloatSpinBox(
            label="score threshold (0 = model's)", value=0.0, min=0.0, max=1.0, step=0.05
        )
        self.output = ComboBox(label="add as", choices=OUTPUTS, value=OUTPUTS[0])
        super().__init__(viewer, [self.threshold, self.output])

    def _make_predictor(self, model: Any, card: Any, device: str) -> Any:
        from napari_mitosis.models.detector import DetectionPredictor

        return DetectionPredictor(model, card, device)

    def _make_run(self, data: Any, predictor: Any, **where: Any) -> Any:
        from napari_mitosis.detection.run import DetectionRun

        return DetectionRun(data, predictor, **where)

    def _finish(self, layer: Any, run: Any) -> Any:
        from napari_mitosis.detection.run import DetectionResult

        found = run.result(self.threshold.value or None)
        card = run.predictor.card
        return DetectionResult(
            found,
            int(run.grid.level),
            run.area_mm2(),
            len(run.origins),
            resampled=self.resampled,
            note=self.resampling_note(card.mpp),
        )

    def _on_done(self, layer: Any, result: Any) -> None:
        found = result.detections
        density = result.density()
        common = {
            "name": f"{layer.name} mitoses",
            "scale": layer.scale[-2:],
            "translate": layer.translate[-2:],
            "units": layer.units,
            "features": {"score": found.scores, "class": np.asarray(found.classes, dtype=object)},
            "metadata": {
                "mpp": list(found.mpp) if found.mpp else None,
                "density": density,
                "model": {"name": self.model_ref(), "notes": self._predictor().card.notes},
            },
        }
        sizes = np.r_[found.boxes[:, 2:] - found.boxes[:, :2]].ravel()
        size = float(np.median(sizes)) if len(sizes) else 40.0
        if self.output.value == OUTPUTS[0]:
            corners = [
                np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]) for x0, y0, x1, y1 in found.boxes
            ]
            self.viewer.add_shapes(
                corners,
                shape_type="rectangle",
                edge_color="#ff3030",
                face_color="transparent",
                edge_width=max(size / 15, 1.0),
                **common,
            )
        else:
            self.viewer.add_points(
                found.centres.reshape(-1, 2),
                size=size,
                face_color="transparent",
                border_color="#ff3030",
                **common,
            )
        text = f"{len(found)} mitoses"
        if density is not None:
            text += (
                f" · {density['per_mm2']:.1f}/mm² · {density['per_10_hpf']:.1f}/10 HPF"
                f" in {density['area_mm2']:.3f} mm²"
            )
        self.status.value = text
