"""Train a model from what is on the canvas: a slide's image layer and a layer of
annotations — mitoses for a detector, tissue regions for a classifier, figure outlines or
labels for a U-Net (`train_tasks`).

The widget only converts layers to files and runs the task's ``napari-mitosis train-…``
command on them in its own process, so the viewer stays responsive, a crash cannot take
napari down, and the result is exactly the command line's for the same data and seed. The
process's progress lines, followed by a napari ``thread_worker``, drive a live plot of
training loss and the validation metric, the elapsed time and an estimate of what is
left. Cancel ends the process; the best checkpoint so far (each is written atomically) is
kept, or nothing. At the end the model is registered in the local model registry, every
docked widget's model list is refreshed, and "Run on the current view" shows what it
learnt.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, LineEdit, PushButton, SpinBox

if TYPE_CHECKING:
    import napari

from napari_mitosis._napari.train_tasks import PROGRESS_LINE, TASKS, command, examples, task

#: (steps or epochs, evaluate every, crop or patch px) a task starts with
DEFAULTS = {"train-detector": (300, 50, 128), "train-classifier": (10, 1, 96),
            "train-unet": (300, 50, 128)}  # fmt: skip


def slide_path(image: Any) -> Path:
    path = image.source.path or (image.metadata or {}).get("path")
    if not path or not Path(path).is_file():
        raise ValueError(
            f"{image.name}: training reads the slide from its file; open the slide from a file"
        )
    return Path(path)


class TrainWidget(Container):
    """Train and register a model from an image layer and a layer of annotations."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari_mitosis._napari import keep_triton_from_mesa

        keep_triton_from_mesa()
        self.viewer = viewer
        self.task = ComboBox(label="task", choices=[t.name for t in TASKS], value=TASKS[0].name)
        self.image = ComboBox(label="slide", choices=self._layers_of(("Image",)))
        self.marks = ComboBox(label="annotations", choices=self._annotation_layers)
        self.class_name = LineEdit(label="class (blank: from the layer)", value="")
        self.recipe = FileEdit(label="recipe (optional)", filter="*.yaml", value="")
        self.init = ComboBox(label="start from", choices=self._models, value=None)
        self.steps = SpinBox(label="steps", value=300, min=1, max=100_000, step=50)
        self.eval_every = SpinBox(label="evaluate every", value=50, min=1, max=10_000, step=5)
        self.crop = SpinBox(label="crop (px)", value=128, min=32, max=1024, step=32)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda"], value="auto")
        self.model_name = LineEdit(label="register as", value="my-detector")
        self.found = Label(value="")
        self.train_button = PushButton(text="Train")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.view_button = PushButton(text="Run on the current view", enabled=False)
        self.status = Label(value="")
        super().__init__(
            widgets=[
                self.task, self.image, self.marks, self.class_name, self.recipe, self.init,
                self.steps, self.eval_every, self.crop, self.device, self.model_name,
                self.found, self.train_button, self.cancel_button, self.view_button,
                self.status,
            ]
        )  # fmt: skip
        self._plot()
        self.history: list[tuple[int, float, float]] = []  # (step, loss, validation metric)
        self.metric = "F1"
        self.process: subprocess.Popen[str] | None = None
        self.registered: str | None = None
        self._worker: Any = None  # napari thread_worker following the process's output
        self._output: list[str] = []
        self._work: Path | None = None
        self._started = 0.0
        self._cancelled = False
        self._closed = False
        self.train_button.changed.connect(lambda *_: self.start())
        self.cancel_button.changed.connect(lambda *_: self.cancel())
        self.view_button.changed.connect(lambda *_: self.run_on_view())
        self.task.changed.connect(self._on_task)
        for widget in (self.image, self.marks, self.class_name):
            widget.changed.connect(self._count)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self.native.destroyed.connect(self._on_destroyed)
        self._count()

    # --- choices ------------------------------------------------------------------------
    @property
    def chosen(self) -> Any:
        return task(self.task.value)

    def _layers_of(self, kinds: tuple[str, ...]) -> Any:
        return lambda _w: [layer for layer in self.viewer.layers if type(layer).__name__ in kinds]

    def _annotation_layers(self, _widget: Any = None) -> list[Any]:
        return self._layers_of(self.chosen.layers)(None)

    def _models(self, _widget: Any = None) -> list[str | None]:
        from napari_mitosis.models.registry import ModelRegistry

        try:
            return [None, *ModelRegistry().names(self.chosen.kind)]
        except ValueError:
            return [None]

    def _on_task(self, *_: Any) -> None:
        """Another task: its layers, its models to start from, its defaults."""
        chosen = self.chosen
        length, every, size = DEFAULTS[chosen.command]
        self.steps.label = chosen.unit
        self.steps.value, self.eval_every.value, self.crop.value = length, every, size
        self.eval_every.visible = chosen.command != "train-classifier"
        self.crop.label = "patch (px)" if chosen.command == "train-classifier" else "crop (px)"
        self.model_name.value = chosen.model_name
        self._refresh()

    def _refresh(self, _event: Any = None) -> None:
        if not self._closed:
            self.image.reset_choices()
            self.marks.reset_choices()
            self.init.reset_choices()
            self._count()

    def _examples(self) -> Any:
        return examples(self.chosen, self.image.value, self.marks.value, self.class_name.value)

    def _count(self, *_: Any) -> None:
        """How many examples the chosen layers give, before anything starts."""
        if self._closed or self.image.value is None or self.marks.value is None:
            self.found.value = "choose a slide and a layer of annotations"
            return
        try:
            self.found.value = self._examples().describe()
        except ValueError as err:
            self.found.value = str(err)

    # --- the live plot -------------------------------------------------------------------
    def _plot(self) -> None:
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(3.2, 2.2), layout="constrained")
        self.loss_axes = self.figure.add_subplot()
        self.metric_axes = self.loss_axes.twinx()
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(180)
        self.native.layout().addWidget(self.canvas)

    def _draw(self) -> None:
        steps, losses, metric = (np.asarray(v, float) for v in zip(*self.history, strict=True))
        self.loss_axes.clear()
        self.metric_axes.clear()
        self.loss_axes.plot(steps, losses, "o-", color="tab:blue", label="training loss")
        self.metric_axes.plot(
            steps, metric, "s-", color="tab:orange", label=f"validation {self.metric}"
        )
        self.metric_axes.set_ylim(0, 1)
        self.loss_axes.set_xlabel(self.chosen.unit[:-1])
        self.loss_axes.set_ylabel("loss", color="tab:blue")
        self.metric_axes.set_ylabel(self.metric, color="tab:orange")
        self.canvas.draw_idle()

    # --- training -------------------------------------------------------------------------
    def command(
        self, slide: Path, annotations: Path, out: Path, classes: tuple[str, ...] = ()
    ) -> list[str]:
        """The task's ``train-…`` command the process runs (the CLI, exactly)."""
        notes = f"trained in napari from layer {self.marks.value.name!r} on {slide.name}" + (
            f", starting from {self.init.value}" if self.init.value else ""
        )
        recipe = str(self.recipe.value) if self.recipe.value else ""
        return command(
            self.chosen,
            slide,
            annotations,
            out,
            classes=classes,
            length=self.steps.value,
            eval_every=self.eval_every.value,
            size=self.crop.value,
            device=self.device.value,
            notes=notes,
            recipe=recipe if recipe not in ("", ".") else None,
            init=str(self.init.value) if self.init.value else None,
        )

    def start(self) -> None:
        if self.process is not None:
            return
        image, marks = self.image.value, self.marks.value
        if image is None or marks is None:
            self.status.value = "choose a slide and a layer of annotations"
            return
        work = Path(tempfile.mkdtemp(prefix="napari-mitosis-train-"))
        try:
            slide = slide_path(image)
            found = self._examples()
            least = 1 if self.chosen.command == "train-classifier" else 2
            if sum(found.counts.values()) < least:
                raise ValueError(f"{marks.name}: {found.describe()}; annotate more")
            annotations = found.write(work)  # e.g. a labels layer that misses the slide
        except ValueError as err:
            shutil.rmtree(work, ignore_errors=True)
            self.status.value = str(err)
            return
        self._work = work
        self.out = self._work / f"{self.model_name.value or self.chosen.model_name}.safetensors"
        self.history.clear()
        self._output.clear()
        self._cancelled = False
        self.process = subprocess.Popen(
            self.command(slide, annotations, self.out, found.classes),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._started = time.monotonic()
        self.train_button.enabled = False
        self.cancel_button.enabled = True
        self.view_button.enabled = False
        self.status.value = "training…"
        self._worker = self._follow(self.process)

    def _follow(self, process: subprocess.Popen[str]) -> Any:
        """A napari ``thread_worker`` reading the process's lines (delivered to
        `on_line` in the Qt thread) until it ends."""
        from napari.qt.threading import thread_worker

        @thread_worker(connect={"yielded": self.on_line, "finished": self._on_exit})
        def lines() -> Any:
            assert process.stdout is not None
            for line in process.stdout:
                yield line.rstrip()

        return lines()

    def on_line(self, line: str) -> None:
        """One line of the training process: a progress line extends the curve and the
        estimate of what is left."""
        self._output.append(line)
        match = PROGRESS_LINE.match(line)
        if match is None or self._closed:
            return
        step, total, loss, metric, value = match.groups()
        self.metric = metric
        self.history.append((int(step), float(loss), float(value)))
        self._draw()
        elapsed = time.monotonic() - self._started
        left = elapsed / int(step) * (int(total) - int(step))
        unit = self.chosen.unit[:-1]
        self.status.value = f"{unit} {step}/{total}: {elapsed:.0f} s, about {left:.0f} s left"

    def _on_exit(self) -> None:
        if self.process is not None:
            self._finished(time.monotonic() - self._started)

    def _finished(self, elapsed: float) -> None:
        assert self.process is not None
        code = self.process.wait()
        self.process = None
        self._worker = None
        self.train_button.enabled = True
        self.cancel_button.enabled = False
        if self._closed:
            return
        from napari_mitosis.io.output_file import stale_partials

        for partial in stale_partials(self.out.parent):  # a save the process was killed in
            if partial.is_file():
                partial.unlink()
        kept = self.out.is_file()
        if code != 0 and not (self._cancelled and kept):
            tail = " ".join(self._output[-2:])
            self.status.value = "cancelled: nothing kept" if self._cancelled else f"failed: {tail}"
            return
        try:
            self.registered = self._register()
        except ValueError as err:
            self.status.value = f"trained ({self.out}), not registered: {err}"
            return
        what = "cancelled: kept the best model so far" if self._cancelled else "trained"
        self.status.value = f"{what} in {elapsed:.0f} s, registered as {self.registered}"
        self.view_button.enabled = True

    def _register(self) -> str:
        """Into the model registry; then every docked widget lists it."""
        from napari_mitosis.models.checkpoint import import_model
        from napari_mitosis.models.registry import ModelRegistry

        registry = ModelRegistry()
        name = base = self.model_name.value or self.chosen.model_name
        number = 2
        while name in registry.names():
            name, number = f"{base}-{number}", number + 1
        import_model(self.out, name=name, registry=registry)
        for widget in getattr(self.viewer.window, "dock_widgets", {}).values():
            if hasattr(widget, "reset_choices"):
                widget.reset_choices()
        return name

    def cancel(self) -> None:
        """End the training process; its best checkpoint so far stays (or nothing)."""
        if self.process is not None:
            self._cancelled = True
            self.process.terminate()

    def run_on_view(self) -> Any:
        """The task's model widget, on the registered model and the current view."""
        _dock, widget = self.viewer.window.add_plugin_dock_widget(
            "napari-mitosis", self.chosen.runs_in
        )
        widget.reset_choices()
        widget.image.value = self.image.value
        widget.registered.value = self.registered
        widget.region.value = "current view"
        widget.run()
        return widget

    def _on_destroyed(self, *_: Any) -> None:
        """Closing the viewer ends the training process."""
        self._closed = True
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None  # the reader's late "finished" then finds nothing to do
