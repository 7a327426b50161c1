"""Mitosis review widget: step through candidates with the keyboard, decide on each, and
watch the count, the 10-HPF hotspot and the mitotic score follow.

The candidates layer (points or shapes, ours or a QuPath GeoJSON) keeps the decisions in
its ``features`` (``review``, ``reviewer``, ``review_time``, ``added``); the state itself is
a `detection.review.Review`. A keypress changes one row of features and one colour and
recomputes the hotspot on the tissue grid; nothing rebuilds the layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
)

from napari_mitosis._napari.review_layer import (
    paint_all,
    paint_one,
    review_from_layer,
    show_only,
)
from napari_mitosis._napari.viewer_parts import (
    camera,
    candidate_source,
    canvas_width_px,
    hotspot_layer,
)
from napari_mitosis.detection.grading import DEFAULT_FIELD_DIAMETER_MM, HotspotFinder, grade
from napari_mitosis.detection.review import DECISIONS, ORDERS, Review

if TYPE_CHECKING:
    import napari

#: action → default key (napari key names); the widget's "keys" field changes them.
DEFAULT_KEYS = {
    "next": "n",
    "previous": "p",
    "accepted": "a",
    "rejected": "r",
    "atypical": "t",
    "unsure": "u",
    "undo": "Backspace",
}
FILTERS = ("all", "unreviewed", *DECISIONS)


class ReviewWidget(Container):
    """Review the candidates of a points or shapes layer on an image layer."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        from napari.layers import Image, Points, Shapes

        from napari_mitosis._napari import keep_triton_from_mesa

        keep_triton_from_mesa()  # the viewer has drawn by now: Mesa's LLVM may be loaded

        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._of(Image))
        self.candidates = ComboBox(label="candidates", choices=self._of((Points, Shapes)))
        self.order = ComboBox(label="order", choices=ORDERS, value="score")
        self.field_um = FloatSpinBox(label="field width (µm)", value=64.0, min=8.0, max=2000.0)
        self.diameter = FloatSpinBox(
            label="HPF diameter (mm)",
            value=DEFAULT_FIELD_DIAMETER_MM,
            min=0.40,
            max=0.69,
            step=0.01,
        )
        self.reviewer = LineEdit(label="reviewer", value="")
        self.keys = LineEdit(label="keys", value=" ".join(DEFAULT_KEYS.values()))
        self.key_help = Label(value=self._key_text())
        self.source = Label(value="")  # the model that made the candidates, when known
        self.buttons = {
            name: PushButton(text=name) for name in ("previous", "next", *DECISIONS, "undo")
        }
        self.add_mode = CheckBox(label="click adds a missed mitosis", value=False)
        self.show = ComboBox(label="show", choices=FILTERS, value="all")
        self.min_score = FloatSpinBox(label="score ≥", value=0.0, min=0.0, max=1.0, step=0.05)
        self.min_p_atypical = FloatSpinBox(
            label="p_atypical ≥", value=0.0, min=0.0, max=1.0, step=0.05
        )
        self.progress = Label(value="")
        self.counts = Label(value="")
        self.save_path = FileEdit(label="save as", mode="w", filter="*.geojson")
        self.save_button = PushButton(text="Save GeoJSON")
        self.report_path = FileEdit(label="report", mode="w", filter="*.html")
        self.report_button = PushButton(text="Write report")
        self.more = CheckBox(label="settings", value=False)
        # The long form, folded away: what is set once per review.
        self.settings = Container(
            widgets=[
                self.field_um,
                self.diameter,
                self.reviewer,
                self.keys,
                self.key_help,
                self.save_path,
                self.report_path,
            ],
            visible=False,
        )
        super().__init__(
            widgets=[
                self.image,
                self.candidates,
                self.source,
                Container(widgets=[self.order, self.show], layout="horizontal"),
                Container(widgets=[self.min_score, self.min_p_atypical], layout="horizontal"),
                # One compact row: previous, next, the four decisions, undo.
                Container(widgets=list(self.buttons.values()), layout="horizontal", labels=False),
                self.progress,
                self.counts,
                self.add_mode,
                Container(
                    widgets=[self.save_button, self.report_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.more,
                self.settings,
            ]
        )
        from napari_mitosis._napari.review_gallery import CandidateGallery

        self.gallery = CandidateGallery(self._go_to, self._gallery_key)
        self.native.layout().addWidget(self.gallery)
        self.more.changed.connect(lambda value: setattr(self.settings, "visible", bool(value)))
        for choice in (self.order, self.min_score, self.min_p_atypical):
            choice.changed.connect(lambda *_: self._apply_filter())
        self.review: Review | None = None
        self.layer: Any = None
        self.tissue: Any = None
        self.finder: HotspotFinder | None = None
        self.hotspot_layer: Any = None
        self.sequence = np.zeros(0, int)
        self.position = -1
        self.grading: dict[str, Any] = {}
        self._bound: list[str] = []
        self._written: set[Path] = set()  # files this widget wrote: saving again replaces them
        # Choosing candidates (or the image under them) starts the review: keys work at once.
        self.candidates.changed.connect(lambda *_: self._restart())
        self.image.changed.connect(lambda *_: self._restart())
        self.reviewer.changed.connect(lambda *_: self._set_reviewer())
        for name, button in self.buttons.items():
            button.changed.connect(lambda *_, n=name: self.act(n))
        self.keys.changed.connect(lambda *_: self._rebind())
        self.show.changed.connect(lambda *_: self._apply_filter())
        self.diameter.changed.connect(lambda *_: self._regrade())
        self.add_mode.changed.connect(lambda *_: self._toggle_add_mode())
        self.save_button.changed.connect(lambda *_: self.save(Path(self.save_path.value)))
        self.report_button.changed.connect(lambda *_: self.report(Path(self.report_path.value)))
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self._restart()  # docked beside candidates already open: ready for keys

    def _of(self, kind: Any) -> Any:
        return lambda _widget: [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh(self, _event: Any = None) -> None:
        self.image.reset_choices()
        self.candidates.reset_choices()

    # --- keys ---------------------------------------------------------------------------
    def key_map(self) -> dict[str, str]:
        """action → key, from the "keys" field (in DEFAULT_KEYS's order)."""
        given = self.keys.value.split()
        if len(given) != len(DEFAULT_KEYS):
            raise ValueError(
                f"give {len(DEFAULT_KEYS)} keys, for {', '.join(DEFAULT_KEYS)}; got {given}"
            )
        return dict(zip(DEFAULT_KEYS, given, strict=True))

    def _key_text(self) -> str:
        try:
            keys = self.key_map()
        except ValueError as err:
            return str(err)
        return "  ".join(f"{k}: {a}" for a, k in keys.items())

    def _rebind(self) -> None:
        self.key_help.value = self._key_text()
        if self.layer is not None:
            self._bind(self.layer)

    def _bind(self, layer: Any) -> None:
        """Our keys on the candidates layer: a layer's own bindings win over its class's
        (mode keys), so these work while it is selected."""
        for key in self._bound:
            layer.keymap.pop(key, None)
        self._bound = []
        try:
            keys = self.key_map()
        except ValueError:
            return
        for action, key in keys.items():
            layer.bind_key(key, lambda _layer, a=action: self.act(a), overwrite=True)
            self._bound.append(key)

    def _gallery_key(self, name: str) -> bool:
        """A key pressed in the gallery: the review's action, if it is one of its keys."""
        try:
            actions = {k.lower(): a for a, k in self.key_map().items()}
        except ValueError:
            return False
        action = actions.get(name.lower())
        if action is not None:
            self.act(action)
        return action is not None

    # --- starting ---------------------------------------------------------------------
    def _restart(self) -> None:
        """(Re)start on the chosen candidates; decisions already made are in their features."""
        if self.candidates.value is not None:
            self.start()

    def _set_reviewer(self) -> None:
        if self.review is not None:
            self.review.reviewer = self.reviewer.value

    def start(self) -> Review:
        """Read the candidates layer (restoring decisions already in its features) and
        go to the first candidate."""
        layer = self.candidates.value
        if layer is None:
            raise ValueError("open or detect candidates first (a points or shapes layer)")
        image = self.image.value
        if image is not None and (layer.metadata or {}).get("coordinates", "").startswith(
            "level-0 pixels"
        ):  # a GeoJSON in level-0 px (QuPath's convention): place it on the image
            layer.scale, layer.translate = image.scale[-2:], image.translate[-2:]
            layer.units = image.units
        self.review = review_from_layer(layer, self.reviewer.value)
        self.layer = layer
        self.source.value = candidate_source(layer, image)
        self.source.visible = bool(self.source.value)  # no empty row without a model
        self._bind(layer)
        self._colour_all()
        if image is not None:
            from napari_mitosis.engine.tissue import tissue_mask

            levels = image.data if image.multiscale else [image.data]
            mpp = self._mpp()
            self.tissue = tissue_mask(levels, level0_mpp=mpp[1] if mpp else None)
            self.finder = None  # built on first use, for the chosen field diameter
        self.sequence = self.review.order(self.order.value)
        self.position = -1
        self._update_counts()
        self.viewer.layers.selection.active = layer
        self.act("next")
        return self.review

    def _mpp(self) -> tuple[float, float] | None:
        image = self.image.value
        mpp = (image.metadata or {}).get("mpp") if image is not None else None
        return (float(mpp[0]), float(mpp[1])) if mpp else None

    # --- acting -----------------------------------------------------------------------
    def act(self, action: str) -> None:
        """next / previous / a decision / undo, as a key or a button does it."""
        if self.review is None:
            self.start()
            return
        if action in ("next", "previous"):
            self._move(1 if action == "next" else -1)
        elif action == "undo":
            step = self.review.undo()
            if step is not None:
                if step.added:
                    self._remove_added(step.index)
                else:
                    self._write_row(step.index)
                    self._go_to(step.index)
                self._update_counts()
        elif action in DECISIONS:
            index = self.current()
            if index is None:
                return
            self.review.decide(index, action)
            self._write_row(index)
            self._update_counts()
            self._move(1)
        else:
            raise ValueError(f"unknown review action {action!r}")

    def current(self) -> int | None:
        if self.position < 0 or self.position >= len(self.sequence):
            return None
        return int(self.sequence[self.position])

    def _move(self, step: int) -> None:
        if not len(self.sequence):
            return
        self.position = int(np.clip(self.position + step, 0, len(self.sequence) - 1))
        self._go_to(self.current())

    def _go_to(self, index: int | None) -> None:
        """Centre the view on candidate ``index`` at the chosen field width, selected."""
        if index is None or self.layer is None:
            return
        where = np.flatnonzero(self.sequence == index)
        if len(where):
            self.position = int(where[0])
        layer = self.layer
        world = np.asarray(layer.data_to_world(self.review.centres[index]))[-2:]
        view = camera(self.viewer)
        view.center = tuple(world)
        width_px = canvas_width_px(self)
        units_per_um = 1.0 if self._mpp() else 1.0 / 0.25  # pixel units: 0.25 µm/px assumed
        view.zoom = width_px / (self.field_um.value * units_per_um)
        layer.selected_data = {index}
        p = self.review.p_atypical[index]
        self.progress.value = (
            f"{self.review.progress()} · candidate {self.position + 1} of {len(self.sequence)}"
            + ("" if np.isnan(p) else f" · p_atypical {p:.2f}")
        )
        self.gallery.set_current(index)

    # --- the layer follows the state --------------------------------------------------
    def _write_row(self, index: int) -> None:
        features = self.layer.features
        features.loc[index, "review"] = self.review.decisions[index]
        features.loc[index, "reviewer"] = self.review.reviewers[index]
        features.loc[index, "review_time"] = self.review.times[index]
        features.loc[index, "added"] = bool(self.review.added[index])
        self._colour(index)
        self.gallery.refresh(index)

    def _shown(self) -> np.ndarray:
        return self.review.shown(
            self.show.value,
            min_score=float(self.min_score.value),
            min_p_atypical=float(self.min_p_atypical.value),
        )

    def _colour_all(self) -> None:
        paint_all(self.layer, self.review.decisions)
        self._apply_filter()

    def _colour(self, index: int) -> None:
        paint_one(self.layer, index, str(self.review.decisions[index]), bool(self._shown()[index]))

    def _apply_filter(self) -> None:
        if self.review is None or self.layer is None:
            return
        shown = self._shown()
        show_only(self.layer, self.review.decisions, shown)
        self.sequence = self.review.order(self.order.value)
        self.sequence = self.sequence[shown[self.sequence]]
        image = self.image.value
        if image is not None:  # the gallery follows the order and the filter
            level0 = image.data[0] if image.multiscale else image.data
            self.gallery.show_review(self.review, self.sequence, level0, self._mpp())

    def _update_counts(self) -> None:
        counts = self.review.counts()
        text = (
            f"mitoses {counts['mitoses']} (atypical {counts['atypical']}) · rejected "
            f"{counts['rejected']} · unsure {counts['unsure']} · unreviewed {counts['unreviewed']}"
        )
        mpp = self._mpp()
        if self.tissue is not None and mpp is not None:
            diameter = float(self.diameter.value)
            if self.finder is None or not np.isclose(self.finder.hpf_mm2, np.pi * diameter**2 / 4):
                self.finder = HotspotFinder(self.tissue, mpp, diameter_mm=diameter)
            self.grading = grade(
                self.review.counted(), self.tissue, mpp, diameter_mm=diameter, finder=self.finder
            )
            per_mm2 = self.grading["per_mm2"]
            spot = self.grading["hotspot_per_10_hpf"]
            text += (
                f"\n{per_mm2:.2f}/mm² · hotspot {spot:.1f}/10 HPF → mitotic score "
                f"{self.grading['mitotic_score']}"
                if per_mm2 is not None and spot is not None
                else ""
            )
            self._draw_hotspot()
        self.counts.value = text
        self.progress.value = self.review.progress()

    def _regrade(self) -> None:
        if self.review is not None:
            self._update_counts()

    def _draw_hotspot(self) -> None:
        if self.image.value is not None:
            self.hotspot_layer = hotspot_layer(
                self.viewer, self.hotspot_layer, self.image.value, self.grading, self._mpp()
            )
            self.viewer.layers.selection.active = self.layer

    # --- added figures ----------------------------------------------------------------
    def _toggle_add_mode(self) -> None:
        if self.layer is None:
            return
        callbacks = self.layer.mouse_drag_callbacks
        if self.add_mode.value and self._on_click not in callbacks:
            callbacks.append(self._on_click)
        elif not self.add_mode.value and self._on_click in callbacks:
            callbacks.remove(self._on_click)

    def _on_click(self, layer: Any, event: Any) -> None:
        """A click in add mode: a new candidate there, accepted and marked as added."""
        yield  # napari drag callbacks are generators: act on release
        position = np.asarray(layer.world_to_data(event.position))[-2:]
        self.add_at(position)

    def add_at(self, centre_yx: Any) -> int:
        index = self.review.add(centre_yx)
        layer = self.layer
        if hasattr(layer, "shape_type"):
            sizes = [np.ptp(np.asarray(s)[:, -2:], axis=0) for s in layer.data] or [
                np.array([40, 40])
            ]
            half = np.median(sizes, axis=0) / 2
            y, x = centre_yx
            layer.add_rectangles(np.array([[y - half[0], x - half[1]], [y + half[0], x + half[1]]]))
        else:
            layer.add(np.asarray(centre_yx, float).reshape(1, 2))
        self._write_row(index)
        self.sequence = np.append(self.sequence, index)
        self._update_counts()
        return index

    def _remove_added(self, index: int) -> None:
        self.layer.selected_data = {index}
        self.layer.remove_selected()
        self.sequence = self.sequence[self.sequence != index]
        self.position = min(self.position, len(self.sequence) - 1)

    # --- saving -----------------------------------------------------------------------
    def _may_replace(self, path: Path) -> bool:
        """Saving again over this review's own file (its candidates' file, or one this
        widget wrote) is the resume workflow; any other existing file is refused
        (`OutputExistsError` names it) rather than clobbered."""
        path = Path(path).resolve()
        source = getattr(getattr(self.layer, "source", None), "path", None)
        return path in self._written or (source is not None and Path(source).resolve() == path)

    def save(self, path: Path) -> Path:
        """The review as QuPath GeoJSON (level-0 px): points, or boxes for shapes layers."""
        from napari_mitosis.io.geojson import write_geojson

        if self.review is None:
            raise ValueError("start a review first")
        half = None
        if hasattr(self.layer, "shape_type") and len(self.layer.data):
            half = float(
                np.median([np.ptp(np.asarray(s)[:, -2:], axis=0).mean() for s in self.layer.data])
                / 2
            )
        replace = self._may_replace(path)
        written = write_geojson(path, self.review.to_annotations(half), overwrite=replace)
        self._written.add(Path(path).resolve())
        return written

    def report(self, path: Path) -> dict[str, Any]:
        from napari_mitosis.detection.report import write_report
        from napari_mitosis.io.formats import open_slide

        image = self.image.value
        if self.review is None or image is None:
            raise ValueError("start a review on an image first")
        source = image.source.path or (image.metadata or {}).get("path")
        if not source:
            raise ValueError("the report reads the slide: open it from a file")
        with open_slide(source, mpp=(self._mpp() or (None,))[0]) as slide:
            numbers = write_report(
                path,
                slide,
                self.review,
                self.tissue,
                field_diameter_mm=self.diameter.value,
                overwrite=self._may_replace(path),
            )
        self._written.add(Path(path).resolve())
        return numbers
