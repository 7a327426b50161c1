"""Review responsiveness at scale: 5,000 candidates on a synthetic slide in a napari window
(under Xvfb), timing what one keypress does — `next` (move the camera, select) and `accept`
(record, recolour one point, recount, recompute the hotspot and redraw it) — and the
hotspot computation alone; then the same keypresses with the canvas redraw they cause; and
the candidate gallery: filling it with every candidate, and scrolling it a page at a time
(thumbnails read lazily: how many were read, never a whole level).
Goals: next and accept ≤ 30 ms median each, hotspot < 200 ms.

Run: xvfb-run -a python benchmarks/bench_review.py [--candidates 5000] [--size 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_mitosis.detection.grading import grade
from napari_mitosis.io.geojson import Annotation, write_geojson
from napari_mitosis.samples.synthetic import write_synthetic_slide


def timed(action, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        out.append((time.perf_counter() - started) * 1e3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--size", type=int, default=16384, help="slide side in px (0.25 µm/px)")
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_mitosis._napari.review_widget import ReviewWidget

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide = work / "slide.tif"
        write_synthetic_slide(slide, args.size, args.size, mpp=0.25, seed=1)
        rng = np.random.default_rng(0)
        centres = rng.uniform(100, args.size - 100, (args.candidates, 2))
        candidates = [
            Annotation(
                np.array([c]), "point", "Mitosis candidate", {"score": float(s)}, "detection"
            )
            for c, s in zip(centres, rng.uniform(0, 1, args.candidates), strict=True)
        ]
        path = write_geojson(work / "candidates.geojson", candidates)
        viewer = napari.Viewer(show=True)
        (image,) = viewer.open(str(slide), plugin="napari-mitosis")
        (points,) = viewer.open(str(path), plugin="napari-mitosis")
        widget = ReviewWidget(viewer)
        viewer.window.add_dock_widget(widget, area="right")  # the gallery laid out, as docked
        widget.image.value, widget.candidates.value = image, points
        started = time.perf_counter()
        widget.start()
        start_ms = (time.perf_counter() - started) * 1e3
        app = QApplication.instance()

        def press(action: str) -> None:
            widget.act(action)
            app.processEvents()  # the redraw the keypress triggers

        app.processEvents()
        nexts = timed(lambda: widget.act("next"), args.repeats)
        accepts = timed(lambda: widget.act("accepted"), args.repeats)
        app.processEvents()
        drawn_next = timed(lambda: press("next"), args.repeats)
        drawn_accept = timed(lambda: press("accepted"), args.repeats)
        counted = widget.review.counted()
        hotspot = timed(
            lambda: grade(counted, widget.tissue, (0.25, 0.25), diameter_mm=0.55), args.repeats
        )
        finder = widget.finder
        regrade = timed(
            lambda: grade(counted, widget.tissue, (0.25, 0.25), finder=finder), args.repeats
        )
        gallery = widget.gallery
        level0 = image.data[0] if image.multiscale else image.data
        filled = timed(
            lambda: gallery.show_review(widget.review, widget.sequence, level0, (0.25, 0.25)), 3
        )
        bar = gallery.verticalScrollBar()

        def page_down() -> None:
            bar.setValue(bar.value() + bar.pageStep())
            app.processEvents()

        scrolls = timed(page_down, args.repeats)
        thumbnails = len(gallery.pixels)
        viewer.close()

    def line(name: str, values: list[float], goal: float) -> str:
        median, p95 = float(np.median(values)), float(np.percentile(values, 95))
        worst = float(np.max(values))
        return (
            f"  {name:30s} median {median:7.1f} ms  p95 {p95:7.1f} ms  max {worst:7.1f} ms"
            f"  (goal < {goal:g} ms)"
        )

    print(
        f"{args.candidates} candidates on a {args.size}² px slide; starting the review "
        f"(tissue mask, features, colours): {start_ms:.0f} ms"
    )
    print(line("next (camera + selection)", nexts, 30))
    print(line("accept (+ recount, hotspot)", accepts, 30))
    print(line("hotspot from scratch", hotspot, 200))
    print(line("hotspot, windows precomputed", regrade, 200))
    print("  with the canvas redraw each keypress causes (Mesa's software OpenGL here):")
    print(line("next + redraw", drawn_next, 50))
    print(line("accept + redraw", drawn_accept, 50))
    print(line("gallery: fill with all", filled, 500))
    print(line("gallery: scroll a page", scrolls, 50))
    print(
        f"  gallery thumbnails read after {args.repeats} pages: {thumbnails} of {args.candidates}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
