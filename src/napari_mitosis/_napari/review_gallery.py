"""A gallery of candidate thumbnails beside the review: every candidate in review order,
framed in its decision's colour, with its score and ``p_atypical``; a click jumps to it,
the review's keys work here too, and the current one is highlighted and kept in view.

Thumbnails are read lazily: only the items scrolled into view read their crop from the
image layer's finest level (a few kilobytes each), so a review of thousands of
candidates never reads a whole level and opens at once. Qt comes from napari's window
(``qtpy``); the state stays in `detection.review.Review`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from qtpy.QtCore import QPoint, QSize, Qt
from qtpy.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap
from qtpy.QtWidgets import QListView, QListWidget, QListWidgetItem

from napari_mitosis.detection.review import COLOURS, Review

#: Thumbnail side on screen (px) and the tissue it shows (µm).
THUMB_PX, THUMB_UM = 72, 24.0
#: Items whose thumbnails are read in one go (the rest as they scroll into view).
READ_AHEAD = 64


def thumbnail(level0: Any, centre_yx: np.ndarray, side_px: int) -> np.ndarray:
    """The ``side_px`` square of ``level0`` (y, x[, c]) around a level-0 centre, as uint8
    RGB, cut at the image's edge (what lies outside stays black)."""
    height, width = int(level0.shape[0]), int(level0.shape[1])
    y0, x0 = (round(float(c) - side_px / 2) for c in centre_yx)
    out = np.zeros((side_px, side_px, 3), np.uint8)
    ys, xs = (
        slice(max(y0, 0), min(y0 + side_px, height)),
        slice(max(x0, 0), min(x0 + side_px, width)),
    )
    if ys.stop > ys.start and xs.stop > xs.start:
        block = np.asarray(level0[ys, xs])
        block = np.repeat(block[..., None], 3, 2) if block.ndim == 2 else block[..., :3]
        out[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] = block
    return out


class CandidateGallery(QListWidget):
    """Thumbnails of a review's candidates; ``on_pick(index)`` on a click, ``on_key(text)``
    for a key press (the review widget maps it to its action)."""

    def __init__(self, on_pick: Callable[[int], None], on_key: Callable[[str], bool]) -> None:
        super().__init__()
        self.on_pick, self.on_key = on_pick, on_key
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(THUMB_PX, THUMB_PX))
        self.setGridSize(QSize(THUMB_PX + 14, THUMB_PX + 30))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setUniformItemSizes(True)
        self.setMinimumHeight(2 * (THUMB_PX + 30) + 8)
        self.review: Review | None = None
        self.level0: Any = None
        self.side_px = 96
        self.items: dict[int, QListWidgetItem] = {}
        self.pixels: dict[int, np.ndarray] = {}  # thumbnails read so far, by candidate
        self.itemClicked.connect(
            lambda item: self.on_pick(int(item.data(Qt.ItemDataRole.UserRole)))
        )
        self.verticalScrollBar().valueChanged.connect(lambda *_: self.load_visible())

    def show_review(self, review: Review, order: np.ndarray, level0: Any, mpp: Any) -> None:
        """All candidates of ``review`` in ``order``; thumbnails come as they are seen."""
        self.clear()
        self.review, self.level0, self.items, self.pixels = review, level0, {}, {}
        self.side_px = max(8, round(THUMB_UM / (mpp[1] if mpp else 0.25)))
        blank = QPixmap(THUMB_PX, THUMB_PX)
        blank.fill(QColor(40, 40, 40))
        for index in order:
            item = QListWidgetItem(QIcon(blank), "")
            item.setData(Qt.ItemDataRole.UserRole, int(index))
            self.addItem(item)
            self.items[int(index)] = item
            self._caption(int(index))
        self.load_visible()

    def _caption(self, index: int) -> None:
        review = self.review
        score, p = review.scores[index], review.p_atypical[index]
        text = "added" if np.isnan(score) else f"{score:.2f}"
        if not np.isnan(p):
            text += f" · a {p:.2f}"
        self.items[index].setText(text)

    def load_visible(self) -> None:
        """Read the thumbnails of the items in view (and a few beyond) not read yet."""
        if self.review is None or not self.items:
            return
        self.executeDelayedItemsLayout()  # where items are, before asking which are in view
        cell = self.gridSize()  # the middle of the first cell in view: an item, not a margin
        first = self.indexAt(QPoint(cell.width() // 2, cell.height() // 2)).row()
        start = max(first, 0)
        for row in range(start, min(start + READ_AHEAD, self.count())):
            index = int(self.item(row).data(Qt.ItemDataRole.UserRole))
            if index not in self.pixels:
                self.pixels[index] = thumbnail(
                    self.level0, self.review.centres[index], self.side_px
                )
                self.refresh(index)

    def refresh(self, index: int) -> None:
        """Redraw one candidate's frame (its decision's colour) and caption."""
        item = self.items.get(index)
        if item is None or self.review is None:
            return
        self._caption(index)
        if index not in self.pixels:
            return
        rgb = np.ascontiguousarray(self.pixels[index])
        image = QImage(
            rgb.data, rgb.shape[1], rgb.shape[0], 3 * rgb.shape[1], QImage.Format.Format_RGB888
        )
        pixmap = QPixmap.fromImage(image.copy()).scaled(THUMB_PX, THUMB_PX)
        colour = COLOURS[str(self.review.decisions[index])]
        painter = QPainter(pixmap)
        painter.setPen(QPen(QColor.fromRgbF(*colour), 6))
        painter.drawRect(0, 0, THUMB_PX - 1, THUMB_PX - 1)
        painter.end()
        item.setIcon(QIcon(pixmap))

    def set_current(self, index: int | None) -> None:
        """Highlight candidate ``index`` and scroll it into view."""
        item = self.items.get(index) if index is not None else None
        if item is None:
            return
        self.blockSignals(True)
        self.setCurrentItem(item)
        self.blockSignals(False)
        self.scrollToItem(item, QListView.ScrollHint.EnsureVisible)
        if index not in self.pixels:  # the current one at least, whatever the layout
            self.pixels[index] = thumbnail(self.level0, self.review.centres[index], self.side_px)
            self.refresh(index)
        self.load_visible()

    def keyPressEvent(self, event: Any) -> None:
        """The review's keys act here as on the canvas; others scroll the list."""
        from qtpy.QtGui import QKeySequence

        name = QKeySequence(event.key()).toString()
        if not self.on_key(name):
            super().keyPressEvent(event)
