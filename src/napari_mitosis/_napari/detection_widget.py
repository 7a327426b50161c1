"""Mitosis detection widget: converts layers ↔ `napari_mitosis.detection.run` calls.

Boxes come back in level-0 pixels, so the new layer takes the image layer's own scale and
translation and lines up at every zoom; each shape's score and class are layer features
(QuPath GeoJSON export keeps them as measurements).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, FloatSpinBox

from napari_mitosis._napari.tiled_widget import HOTSPOT_REGION, TiledModelWidget

if TYPE_CHECKING:
    import napari

OUTPUTS = ("rectangles (shapes)", "centres (points)")


class DetectionWidget(TiledModelWidget):
    """Pick an RGB image layer and a detector checkpoint; get scored boxes and a density."""

    task = "detection"
    model_label = "detector"
    # a heavy model on the hotspot a fast one found over the whole tissue
    regions = (*TiledModelWidget.regions, HOTSPOT_REGION)

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.threshold = FloatSpinBox(
            label="score threshold (0 = model's)", value=0.0, min=0.0, max=1.0, step=0.05
        )
        self.output = ComboBox(label="add as", choices=OUTPUTS, value=OUTPUTS[0])
        # A registered crop classifier (atypical vs normal) run on every candidate found.
        self.subtype = ComboBox(label="subtype with", choices=self._classifier_names, value=None)
        super().__init__(viewer, [self.threshold, self.output, self.subtype])
        self._classifiers: dict[tuple[str, str], Any] = {}

    def _classifier_names(self, _widget: Any = None) -> list[str | None]:
        """Registered crop classifiers that read µm/px (None: no subtyping)."""
        from napari_mitosis.models.registry import ModelRegistry

        try:
            return [None, *(e.name for e in ModelRegistry().entries("classification") if e.mpp)]
        except ValueError:
            return [None]

    def _refresh(self, _event: Any = None) -> None:
        super()._refresh(_event)
        if not self._closed:
            self.subtype.reset_choices()

    def _classifier(self, name: str) -> Any:
        from napari_mitosis.classification.predictor import ClassifierPredictor
        from napari_mitosis.models.checkpoint import load_checkpoint

        key = (name, self.device.value)
        if key not in self._classifiers:
            model, card = load_checkpoint(name, task="classification")
            self._classifiers[key] = ClassifierPredictor(model, card, key[1])
        return self._classifiers[key]

    def _finish_steps(self, layer: Any, run: Any) -> Any:
        """Detections, then (with "subtype with") each candidate's crop through the
        classifier in batches, as `subtype` runs it: ``p_<class>`` columns."""
        from napari_mitosis.detection.candidates import subtype_steps
        from napari_mitosis.detection.candidates import with_scores as scored

        result = self._finish(layer, run)
        name = self.subtype.value
        if not name or not len(result.detections):
            return result
        predictor = self._classifier(name)
        level0 = layer.data[0] if layer.multiscale else layer.data
        mpp = self.image_mpp(layer, predictor.card.mpp)
        scores = yield from subtype_steps(
            level0, result.detections.centres, predictor, name=str(name),
            mpp=mpp[1] if mpp else None,
        )  # fmt: skip
        return replace(
            result,
            detections=scored(result.detections, scores),
            candidate_models=scores.models,
        )

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
        hotspot = None
        if self.tissue is not None and run.mpp0 is not None:  # "whole tissue": its hotspot
            from napari_mitosis.detection.run import densest_area

            hotspot = densest_area(found.centres, self.tissue, run.mpp0)
        return DetectionResult(
            found,
            int(run.grid.level),
            run.area_mm2(),
            len(run.origins),
            hotspot,
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
            "features": {
                "score": found.scores,
                "class": np.asarray(found.classes, dtype=object),
                **found.measurements,
            },
            "metadata": {
                "mpp": list(found.mpp) if found.mpp else None,
                "density": density,
                "model": {"name": self.model_ref(), "notes": self._predictor().card.notes},
                "classifiers": result.candidate_models,
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
        text = f"{len(found)} candidates"
        if result.hotspot is not None and found.mpp is not None:
            from napari_mitosis.detection.run import hotspot_region

            level0 = layer.data[0] if layer.multiscale else layer.data
            self.last_hotspot = hotspot_region(result.hotspot, found.mpp, level0.shape)
            text += f" · hotspot {result.hotspot['per_10_hpf']:.1f}/10 HPF"
        models = result.candidate_models
        if "p_atypical" in models and "p_atypical" in found.measurements:
            called = int(
                (found.measurements["p_atypical"] >= models["p_atypical"]["threshold"]).sum()
            )
            text += f" ({called} called atypical)"
        if density is not None:
            text += (
                f" · {density['per_mm2']:.1f}/mm² · {density['per_10_hpf']:.1f}/10 HPF"
                f" in {density['area_mm2']:.3f} mm²"
            )
        self.status.value = text
