"""Tumour classification widget: converts layers ↔ `napari_mitosis.classification.run` calls.

The heatmap has one value per cell (``stride`` level pixels); its layers are drawn at the
image's own pixel size and end where the image ends (`grid_layers`), so every cell lies
over the slide pixels it was computed from, at every zoom, and none overhangs the edge.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import CheckBox, FloatSpinBox, SpinBox

from napari_mitosis._napari.grid_layers import clipped_levels, grid_layers
from napari_mitosis._napari.tiled_widget import TiledModelWidget

if TYPE_CHECKING:
    import napari


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
        self.tta = CheckBox(
            label="test-time augmentation (the flips the model trained on; always for a "
            "model trained with it)",
            value=False,
        )
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
        predictor.tta = bool(self.tta.value) or predictor.trained_with_tta
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
        image0 = (layer.data[0] if layer.multiscale else layer.data).shape[:2]
        end0 = tuple(min(e, n) for e, n in zip(result.end_level0, image0, strict=True))
        label_grid = "mask" if result.binary else "classes"
        grids = {"heatmap": result.heatmap}
        if not result.binary:
            grids = result.class_probability()
        levels, masks, geometry = {}, {}, {}
        for name, values in grids.items():
            levels[name], masks, geometry = grid_layers(
                values,
                {label_grid: result.mask},
                origin0=result.origin_level0,
                cell0=result.cell_level0,
                end0=end0,
                scale0=tuple(layer.scale[-2:]),
                translate0=tuple(layer.translate[-2:]),
            )
        meta = {
            "mpp": list(result.mpp) if result.mpp else None,
            "origin_level0_yx": list(result.origin_level0),
            "cell_level0_px": result.cell_level0,
            "threshold": result.threshold,
            "classes": list(result.classes),
        }
        common = {**geometry, "units": layer.units, "metadata": meta}
        if result.binary:
            self._add_binary(layer, levels["heatmap"], masks["mask"], common)
        else:
            self._add_classes(layer, levels, masks["classes"], result.classes, common)
        if self.show_tissue.value and self.tissue is not None:
            tissue = clipped_levels(
                self.tissue.mask.astype(np.uint8), cell0=self.tissue.downsample[0], extent0=image0
            )
            self.viewer.add_labels(
                tissue,
                multiscale=len(tissue) > 1,
                name=f"{layer.name} tissue",
                opacity=0.25,
                scale=tuple(layer.scale[-2:]),
                translate=tuple(layer.translate[-2:]),
                units=layer.units,
            )
        if result.binary:
            area = result.tumour_area_mm2()
            text = f"tumour: {int(result.mask.sum())} of {int(result.visited.sum())} cells"
            if area is not None:
                text += f" = {area:.3f} mm²"
        else:
            counts = {n: int((result.mask == v).sum()) for v, n in result.label_names().items()}
            text = ", ".join(f"{n} {c}" for n, c in counts.items() if c) + " cells"
        self.status.value = text

    def _add_binary(self, layer: Any, heatmap: Any, mask: Any, common: dict[str, Any]) -> None:
        self.viewer.add_image(
            heatmap,
            multiscale=len(heatmap) > 1,
            name=f"{layer.name} tumour probability",
            colormap="inferno",
            opacity=0.5,
            contrast_limits=(0, 1),
            **common,
        )
        self.viewer.add_labels(
            mask,
            multiscale=len(mask) > 1,
            name=f"{layer.name} tumour mask",
            opacity=0.4,
            **common,
        )

    def _add_classes(
        self,
        layer: Any,
        heatmaps: dict[str, Any],
        labels: Any,
        classes: tuple[str, ...],
        common: dict[str, Any],
    ) -> None:
        """K-class output: a probability layer per class, transparent to the class's
        colour (only the first shown), and the argmax labels named by class."""
        from napari.utils.colormaps import Colormap

        from napari_mitosis.classification.heatmap_files import class_colour

        for k, (name, levels) in enumerate(heatmaps.items()):
            rgb = [c / 255 for c in class_colour(k)]
            self.viewer.add_image(
                levels,
                multiscale=len(levels) > 1,
                name=f"{layer.name} prob {name}",
                colormap=Colormap([[*rgb, 0.0], [*rgb, 1.0]], name=f"class {name}"),
                contrast_limits=(0, 1),
                opacity=0.7,
                visible=k == 0,
                **common,
            )
        colours = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        colours.update(
            {k + 1: (*(c / 255 for c in class_colour(k)), 1.0) for k in range(len(classes))}
        )
        self.viewer.add_labels(
            labels,
            multiscale=len(labels) > 1,
            name=f"{layer.name} classes",
            opacity=0.4,
            colormap=colours,
            features={"index": list(range(len(classes) + 1)), "class": ["none", *classes]},
            **common,
        )
