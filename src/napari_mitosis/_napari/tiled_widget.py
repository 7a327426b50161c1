"""What the model widgets share: an RGB image layer, a checkpoint, a region, a worker.

A subclass says which task its checkpoints must be, builds the core's run object for the
chosen level and region, and turns the result into layers. The work runs in a napari
``thread_worker`` (the Qt thread never blocks); the engine yields after each batch, which
drives the progress bar and lets Cancel stop between batches. Loaded models are cached per
(path, device) for the widget's lifetime.
"""

from __future__ import annotations

import io
from collections.abc import Generator
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
    Widget,
)
from napari.utils.notifications import show_warning

from napari_mitosis._napari.viewer_parts import synthetic_warning
from napari_mitosis.models.card import trained_on

if TYPE_CHECKING:
    import napari

REGIONS = ("whole image", "whole tissue", "current view", "shapes layer box")
#: The detection widget's extra region: the last run's 10-HPF hotspot (`last_hotspot`).
HOTSPOT_REGION = "hotspot of the last run"


class TiledModelWidget(Container):
    """Base of the segmentation and detection widgets."""

    task = ""  # the model card task this widget runs
    model_label = "model"
    regions: tuple[str, ...] = REGIONS

    def __init__(self, viewer: napari.viewer.Viewer, extra: list[Widget]) -> None:
        from napari.layers import Image, Shapes

        from napari_mitosis._napari import keep_triton_from_mesa

        keep_triton_from_mesa()  # the viewer has drawn by now: Mesa's LLVM may be loaded

        self.viewer = viewer
        self.resampled = 1.0  # the last run: image pixels per model pixel (`io.resampled`)
        self.image = ComboBox(label="image", choices=self._layers_of(Image))
        self.model_path = FileEdit(label=self.model_label, filter="*.safetensors")
        self.registered = ComboBox(
            label="or a registered model", choices=self._registered_names, value=None
        )
        self.card_text = Label(value="")
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.level = SpinBox(label="pyramid level (-1: the model's µm/px)", value=-1, min=-1)
        self.mpp = FloatSpinBox(
            label="µm/px if the image does not say (0: unknown)",
            value=0.0,
            min=0.0,
            max=100.0,
            step=0.001,
        )
        self.overlap = SpinBox(label="overlap (px)", value=64, min=0, max=1024, step=16)
        self.region = ComboBox(label="region", choices=self.regions, value=REGIONS[0])
        self.shapes = ComboBox(label="shapes layer", choices=self._layers_of(Shapes))
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="tiles")
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.image,
                self.model_path,
                self.registered,
                self.card_text,
                self.device,
                self.level,
                self.mpp,
                *extra,
                self.overlap,
                self.region,
                self.shapes,
                self.run_button,
                self.cancel_button,
                self.progress,
                self.status,
            ]
        )
        self._models: dict[tuple[str, str], Any] = {}
        self.tissue: Any = None  # the last run's tissue mask, when one was computed
        #: level-0 (y0, x0, y1, x1) of the last run's 10-HPF hotspot (detection)
        self.last_hotspot: tuple[int, int, int, int] | None = None
        self._estimate: Any = None  # the run's time estimate (`engine.timing`)
        self._run_status = ""
        self._worker: Any = None
        self._running_on: Any = None  # the image layer of the run in progress
        self._closed = False  # the widget's Qt side is gone: touch none of it
        self.registered.changed.connect(self._show_card)
        self.model_path.changed.connect(self._show_card)
        self.image.changed.connect(self._show_card)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        viewer.layers.events.removed.connect(self._on_layer_removed)
        self.native.destroyed.connect(self._on_destroyed)

    # --- what subclasses provide ------------------------------------------------------
    def _make_predictor(self, model: Any, card: Any, device: str) -> Any:
        raise NotImplementedError

    def _make_run(self, data: Any, predictor: Any, **where: Any) -> Any:
        raise NotImplementedError

    def _finish(self, layer: Any, run: Any) -> Any:
        """Runs in the worker after the last tile: the result handed to `_on_done`."""
        raise NotImplementedError

    def _finish_steps(self, layer: Any, run: Any) -> Generator[tuple[int, int], None, Any]:
        """The worker's work after the last tile, yielding (done, total) where it has
        batches of its own (so progress and Cancel reach them); returns `_finish`'s result."""
        return self._finish(layer, run)
        yield  # a generator: subclasses yield their own steps

    def _on_done(self, layer: Any, result: Any) -> None:
        raise NotImplementedError

    def _min_tissue(self) -> float:
        """Tiles with less tissue are skipped (0: tissue is not looked at)."""
        return 0.05 if self.region.value == "whole tissue" else 0.0

    # --- shared machinery -------------------------------------------------------------
    def _registered_names(self, _widget: Any = None) -> list[str | None]:
        """Registered models of this widget's task (`models.registry`); None: use the file."""
        from napari_mitosis.models.registry import ModelRegistry

        try:
            return [None, *ModelRegistry().names(self.task)]
        except ValueError:  # an unreadable registry entry must not break the widget
            return [None]

    def model_ref(self) -> str:
        """The chosen model: a registered name, else the file or folder path."""
        if self.registered.value:
            return str(self.registered.value)
        path = self.model_path.value
        if not path or str(path) in ("", ".") or not Path(path).exists():
            raise ValueError(
                f"{path}: choose a {self.model_label} checkpoint (.safetensors), a WSInfer "
                "folder, a TorchScript/ONNX file with its card, or a registered model"
            )
        return str(path)

    def _show_card(self, *_: Any) -> None:
        """The chosen model's card in one line: what it reads and what it calls."""
        from napari_mitosis.models.checkpoint import read_card

        if self._closed:
            return
        try:
            card = read_card(self.model_ref())
        except (ValueError, FileNotFoundError, OSError) as err:
            self.card_text.value = "" if not self.model_path.value else str(err)[:120]
            return
        mpp = f"{card.mpp:g} µm/px" if card.mpp else "pixel units"
        lines = [
            f"{card.architecture}: {card.task}, {card.input_size} px at {mpp}, "
            f"classes {', '.join(card.classes)}",
            trained_on(card),
            *self._registered_line(),
        ]
        warning = synthetic_warning(card.notes, self.image.value)
        self.card_text.value = "\n".join([*lines, f"⚠ {warning}"] if warning else lines)

    def _registered_line(self) -> list[str]:
        """A registered model's licence and provenance, as the registry recorded them."""
        from napari_mitosis.models.registry import ModelRegistry

        if not self.registered.value:
            return []
        try:
            entry = ModelRegistry().get(str(self.registered.value))
        except (KeyError, ValueError):
            return []
        parts = [f"licence: {entry.licence or 'not recorded'}"]
        if entry.provenance:
            parts.append(entry.provenance[:100])
        return ["; ".join(parts)]

    def _layers_of(self, kind: type) -> Any:
        return lambda _widget: [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh(self, _event: Any = None) -> None:
        if not self._closed:
            self.image.reset_choices()
            self.shapes.reset_choices()
            self.registered.reset_choices()

    # --- a run outlives nothing it depends on ------------------------------------------
    def _on_layer_removed(self, event: Any) -> None:
        if self._running_on is not None and event.value is self._running_on:
            self.cancel("cancelled: its image layer was removed, nothing added")

    def _on_destroyed(self, *_: Any) -> None:
        """The viewer closed (or the dock was removed): stop the run and wait for its
        thread, so no result or progress arrives at widgets that no longer exist."""
        self._closed = True
        for signal in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            signal.disconnect(self._refresh)
        self.viewer.layers.events.removed.disconnect(self._on_layer_removed)
        if self._worker is not None:
            self._worker.quit()
            from qtpy.QtCore import QThreadPool

            QThreadPool.globalInstance().waitForDone(30_000)  # the batch in flight, at most

    def _deliver(self, layer: Any, result: Any) -> None:
        """A finished run's result becomes layers, if its widget and image are still there."""
        if self._closed or layer not in self.viewer.layers:
            return
        self._on_done(layer, result)

    def _predictor(self) -> Any:
        from napari_mitosis.models.checkpoint import load_checkpoint

        key = (self.model_ref(), self.device.value)
        if key not in self._models:
            model, card = load_checkpoint(key[0], task=self.task)
            self._models[key] = self._make_predictor(model, card, key[1])
        return self._models[key]

    @staticmethod
    def layer_mpp(layer: Any) -> tuple[float, float] | None:
        """Level-0 µm/pixel from the reader's metadata (None: pixel units)."""
        mpp = (layer.metadata or {}).get("mpp")
        return (float(mpp[0]), float(mpp[1])) if mpp else None

    def image_mpp(self, layer: Any, target_mpp: float | None) -> tuple[float, float] | None:
        """The layer's µm/pixel, else the widget's field; an error when the model needs
        one and neither gives it (the same rule as `Slide.model_level`)."""
        own, given = self.layer_mpp(layer), float(self.mpp.value)
        if own is not None:
            if given > 0 and not np.isclose(own[1], given, rtol=0.01):
                # A notification, not the status line: the run's own lines would replace it.
                show_warning(
                    f"{layer.name} says {own[1]:g} µm/px; the {given:g} µm/px given is ignored"
                )
            return own
        if given > 0:
            return (given, given)
        if target_mpp is not None and self.level.value < 0:
            raise ValueError(
                f"{layer.name}: does not say its µm/pixel, and the {self.model_label} reads "
                f"{target_mpp:g} µm/px: enter the image's in the µm/px field"
            )
        return None

    def _level(
        self,
        layer: Any,
        target_mpp: float | None,
        mpp: tuple[float, float] | None,
        tolerance: float,
    ) -> tuple[int, float]:
        """The chosen level (read as it is), else where the model reads at its own µm/pixel
        when the image's is known: (level, level pixels per model pixel), the rule of
        `Slide.model_level`."""
        from napari_mitosis.io.resampled import model_scale

        if self.level.value >= 0:
            count = len(layer.data) if layer.multiscale else 1
            if self.level.value >= count:
                raise ValueError(f"{layer.name} has {count} pyramid levels; choose 0–{count - 1}")
            return int(self.level.value), 1.0
        if not mpp or target_mpp is None:
            return 0, 1.0
        levels = layer.data if layer.multiscale else [layer.data]
        h0 = levels[0].shape[0]
        return model_scale([mpp[1] * h0 / lv.shape[0] for lv in levels], target_mpp, tolerance)

    def resampling_note(self, model_mpp: float | None) -> str:
        """What the last run's model saw, when not the image's own pixels."""
        from napari_mitosis.io.resampled import resampling_note

        return resampling_note(self.resampled, model_mpp)

    def _region(self, layer: Any, downsample: float) -> tuple[int, int, int, int] | None:
        """The chosen region in pixels of the level being analysed."""
        if self.region.value == HOTSPOT_REGION:
            if self.last_hotspot is None:
                raise ValueError(
                    "no hotspot yet: run a fast detector on the whole tissue first, then the "
                    "heavy one on its hotspot"
                )
            y0, x0, y1, x1 = (v / downsample for v in self.last_hotspot)
            return int(y0), int(x0), int(np.ceil(y1)), int(np.ceil(x1))
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
        """Start the model in a worker thread; returns the worker (tests wait on it)."""
        from napari.qt.threading import thread_worker

        layer = self.image.value
        if layer is None:
            raise ValueError("open an image first")
        if not layer.rgb:
            raise ValueError(f"{layer.name}: the {self.model_label} needs an RGB image")
        predictor = self._predictor()
        warning = synthetic_warning(predictor.card.notes, layer)
        if warning:  # a notification: the run's status lines would replace it
            show_warning(f"{self.model_ref()}: {warning}")
        mpp = self.image_mpp(layer, predictor.card.mpp)
        # WSInfer models read level 0 and resize; ours read the level nearest their µm/px.
        wsinfer = predictor.card.patching == "wsinfer"
        card = predictor.card
        level, factor = self._level(layer, None if wsinfer else card.mpp, mpp, card.mpp_tolerance)
        data = layer.data[level] if layer.multiscale else layer.data
        downsample = layer.data[0].shape[0] / data.shape[0] if layer.multiscale else 1.0
        self.resampled = factor
        if factor != 1.0:
            from napari_mitosis.io.resampled import ResampledLevel

            data, downsample = ResampledLevel(data, factor), downsample * factor
        run = self._make_run(
            data,
            predictor,
            overlap=self.overlap.value,
            region=self._region(layer, downsample),
            level=level,
            downsample=downsample,
            level_mpp=(mpp[0] * downsample, mpp[1] * downsample) if mpp else None,
        )
        self.tissue = None  # this run's, or none: never an earlier run's
        if self._min_tissue() > 0:
            from napari_mitosis.engine.tissue import tissue_mask

            levels = layer.data if layer.multiscale else [layer.data]
            self.tissue = tissue_mask(levels, level0_mpp=mpp[1] if mpp else None)
            run.restrict_to_tissue(self.tissue, self._min_tissue(), source=layer.name)

        @thread_worker(
            connect={"yielded": self._on_progress, "returned": lambda r: self._deliver(layer, r)}
        )
        def work() -> Any:
            yield from run.steps()
            return (yield from self._finish_steps(layer, run))

        self._worker = work()
        self._running_on = layer
        self._worker.finished.connect(self._on_finished)
        self.progress.max = len(run.origins)
        self.progress.value = 0
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"level {level}: {len(run.origins)} of {len(run.grid)} tiles"
        self._run_status, self._estimate = self.status.value, None
        note = self.resampling_note(card.mpp)
        if note:
            self.status.value += f" ({note})"
            if factor < 1:  # upsampled: worth a notification, not only the status line
                show_warning(f"{layer.name}: {note}")
        return self._worker

    def cancel(self, why: str = "cancelled: no layer added") -> None:
        self._run_status = ""  # progress still in flight must not replace ``why``
        if self._worker is not None:
            self._worker.quit()
            if not self._closed:
                self.status.value = why

    def _on_progress(self, step: tuple[int, int]) -> None:
        """The bar, and the time left from the tiles per second so far (a new estimate
        for each stage, e.g. the candidates' crops after the tiles)."""
        if self._closed:
            return
        from napari_mitosis.engine.timing import TimeEstimate

        done, total = int(step[0]), max(int(step[1]), 1)
        if self._estimate is None or self.progress.max != total:
            self._estimate = TimeEstimate("tiles", stream=io.StringIO())
        self.progress.max = total
        self.progress.value = done
        self._estimate(done, total)
        if self._estimate.text and self._run_status:
            self.status.value = f"{self._run_status} · {self._estimate.text}"

    def _on_finished(self) -> None:
        self._running_on = None
        if not self._closed:
            self.run_button.enabled = True
            self.cancel_button.enabled = False
