"""Mitosis segmentation widget: converts layers ↔ `napari_mitosis.segmentation` calls.

The work runs in a napari ``thread_worker`` (the Qt thread never blocks); the engine yields
after each batch, which drives the progress bar and lets Cancel stop between batches.
Loaded models are cached per (path, device) for the widget's lifetime.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)

if TYPE_CHECKING:
    import napari

REGIONS = ("whole image", "whole tissue", "current view", "shapes layer box")


class SegmentationWidget(Container):
    """Pick an RGB image layer and a U-Net checkpoint; get probability and labels layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari.layers import Image, Shapes

        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._layers_of(Image))
        self.model_path = FileEdit(label="U-Net model", filter="*.safetensors")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.tile = SpinBox(label="tile (px)", value=256, min=32, max=2048, step=32)
        self.overlap = SpinBox(label="overlap (px)", value=64, min=0, max=1024, step=16)
        self.threshold = FloatSpinBox(
            label="threshold (0 = model's)", value=0.0, min=0.0, max=1.0, step=0.05
        )
        self.region = ComboBox(label="region", choices=REGIONS, value=REGIONS[0])
        self.shapes = ComboBox(label="shapes layer", choices=self._layers_of(Shapes))
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="tiles")
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.image,
                self.model_path,
                self.device,
                self.tile,
                self.overlap,
                self.threshold,
                self.region,
                self.shapes,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self._models: dict[tuple[str, str], Any] = {}
        self._worker: Any = None
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)

    def _layers_of(self, kind: type) -> Any:
        return lambda _widget: [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh(self, _event: Any = None) -> None:
        self.image.reset_choices()
        self.shapes.reset_choices()

    def _predictor(self) -> Any:
        from napari_mitosis.checkpoint import load_checkpoint
        from napari_mitosis.tiled_inference import TilePredictor

        key = (str(self.model_path.value), self.device.value)
        if key not in self._models:
            model, card = load_checkpoint(Path(key[0]), task="segmentation")
            self._models[key] = TilePredictor(model, card, key[1])
        return self._models[key]

    def _level(self, layer: Any, target_mpp: float | None) -> int:
        """The level matching the model's µm/pixel when the layer knows its own."""
        if not layer.multiscale:
            return 0
        mpp = (layer.metadata or {}).get("mpp")
        if not mpp or target_mpp is None:
            return 0
        h0 = layer.data[0].shape[0]
        errors = [abs(np.log(mpp[0] * h0 / level.shape[0] / target_mpp)) for level in layer.data]
        return int(np.argmin(errors))

    def _region(
        self, layer: Any, level_shape: tuple[int, ...], downsample: float
    ) -> tuple[int, int, int, int] | None:
        """The chosen region in pixels of the level being segmented."""
        if self.region.value == "current view":
            corners = np.asarray(layer.corner_pixels, float)[:, -2:]
            if layer.multiscale:  # corner_pixels are in the displayed level's pixels
                corners *= layer.data[0].shape[0] / layer.data[layer.data_level].shape[0]
            corners /= downsample
            return (
                int(corners[0, 0]),
                int(corners[0, 1]),
                int(np.ceil(corners[1, 0])) + 1,
                int(np.ceil(corners[1, 1])) + 1,
            )
        if self.region.value == "shapes layer box":
            shapes = self.shapes.value
            if shapes is None or len(shapes.data) == 0:
                raise ValueError("choose a shapes layer holding a rectangle around the region")
            index = next(iter(shapes.selected_data), 0)
            world = (
                np.asarray(shapes.data[index])[:, -2:] * shapes.scale[-2:] + shapes.translate[-2:]
            )
            pixels = (world - layer.translate[-2:]) / layer.scale[-2:] / downsample
            return (
                int(pixels[:, 0].min()),
                int(pixels[:, 1].min()),
                int(np.ceil(pixels[:, 0].max())),
                int(np.ceil(pixels[:, 1].max())),
            )
        return None

    def run(self) -> Any:
        """Start segmentation in a worker thread; returns the worker (tests wait on it)."""
        from napari.qt.threading import thread_worker

        from napari_mitosis.segmentation import SegmentationRun

        layer = self.image.value
        if layer is None:
            raise ValueError("open an image first")
        if not layer.rgb:
            raise ValueError(f"{layer.name}: the mitosis U-Net needs an RGB image")
        if not self.model_path.value or not Path(self.model_path.value).is_file():
            raise ValueError(f"{self.model_path.value}: choose a U-Net checkpoint (.safetensors)")
        predictor = self._predictor()
        level = self._level(layer, predictor.card.mpp)
        data = layer.data[level] if layer.multiscale else layer.data
        downsample = layer.data[0].shape[0] / data.shape[0] if layer.multiscale else 1.0
        mpp = (layer.metadata or {}).get("mpp")
        level_mpp = (mpp[0] * downsample, mpp[1] * downsample) if mpp else None
        run = SegmentationRun(
            data,
            predictor,
            tile=self.tile.value,
            overlap=self.overlap.value,
            region=self._region(layer, data.shape, downsample),
            level=level,
            downsample=downsample,
            level_mpp=level_mpp,
        )
        if self.region.value == "whole tissue":
            from napari_mitosis.tissue import tissue_mask

            levels = layer.data if layer.multiscale else [layer.data]
            mpp = (layer.metadata or {}).get("mpp")
            run.restrict_to_tissue(tissue_mask(levels, level0_mpp=mpp[1] if mpp else None))
        threshold = self.threshold.value or None

        @thread_worker(
            connect={"yielded": self._on_progress, "returned": lambda r: self._on_done(layer, r)}
        )
        def work() -> Any:
            yield from run.steps()
            return run.result(threshold)

        self._worker = work()
        self._worker.finished.connect(self._on_finished)
        self.progress.max = len(run.origins)
        self.progress.value = 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"segmenting level {level}: {len(run.origins)} of {len(run.grid)} tiles"
        return self._worker

    def cancel(self) -> None:
        if self._worker is not None:
            self._worker.quit()
            self.status.value = "cancelled: no layer added"

    def _on_progress(self, step: tuple[int, int]) -> None:
        self.progress.value = step[0]

    def _on_finished(self) -> None:
        self.run_button.enabled = True
        self.cancel_button.enabled = False

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
