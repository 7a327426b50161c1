"""The review widget's screenshot in docs/: a synthetic slide's figures and look-alikes as
scored candidates (with ``p_atypical``), a few of them judged, the widget docked with its
candidate gallery, taken headless and saved as a small palette PNG.

Run: xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python tools/review_screenshot.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from napari_mitosis.io.geojson import CLASSIFIERS_KEY, Annotation, write_geojson
from napari_mitosis.samples.synthetic import write_synthetic_slide

ROOT = Path(__file__).resolve().parents[1]


def _settle(seconds: float) -> None:
    from qtpy.QtWidgets import QApplication

    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        QApplication.processEvents()
        time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot-review.png")
    parser.add_argument("--colours", type=int, default=128, help="palette size of the PNG")
    args = parser.parse_args()

    import napari

    from napari_mitosis._napari.review_widget import ReviewWidget

    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "slide.tif"
        truth = write_synthetic_slide(slide, 4096, 6144, mpp=0.25, seed=3)
        rng = np.random.default_rng(0)
        figures = np.asarray(truth.mitoses).reshape(-1, 2)
        alikes = np.asarray(truth.distractors).reshape(-1, 2)
        centres = np.vstack([figures, alikes])
        scores = np.r_[rng.uniform(0.6, 0.99, len(figures)), rng.uniform(0.3, 0.8, len(alikes))]
        p_atypical = rng.beta(1.5, 4, len(centres))
        record = {"p_atypical": {"model": "atypical", "threshold": 0.5}}
        candidates = [
            Annotation(c[None], "point", "Mitosis candidate", {"score": s, "p_atypical": p},
                       "detection", {CLASSIFIERS_KEY: record})
            for c, s, p in zip(centres, scores, p_atypical, strict=True)
        ]  # fmt: skip
        path = write_geojson(Path(tmp) / "slide.mitoses.geojson", candidates)
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1500, 950)
        (image,) = viewer.open(str(slide), plugin="napari-mitosis")
        (points,) = viewer.open(str(path), plugin="napari-mitosis")
        widget = ReviewWidget(viewer)
        viewer.window.add_dock_widget(widget, area="right", name="Review mitoses")
        widget.image.value, widget.candidates.value = image, points
        widget.order.value = "score"
        for action in ("accepted", "accepted", "rejected", "atypical", "unsure"):
            widget.act(action)  # each decision moves on to the next candidate
        _settle(4.0)
        shot = Path(tmp) / "shot.png"
        viewer.screenshot(str(shot), canvas_only=False, flash=False)
        viewer.close()
        picture = Image.open(shot).convert("RGB")
        picture.thumbnail((1400, 1400))
        picture.quantize(args.colours, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
