"""Small demo models trained on synthetic data, because no trained weights ship with the
package. Their cards (and so every output made with them) say "demo model, trained on
synthetic data". Each is trained once: an existing checkpoint is reused.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

DEMO_NOTES = "demo model, trained on synthetic data"


def demo_classifier(path: str | Path, *, device: str = "auto", log: bool = True) -> Path:
    """A small CNN tumour classifier (64 px at 1 µm/px) trained on two synthetic slides'
    patches (~20 s on CPU)."""
    from napari_mitosis.classification.data import slide_patches
    from napari_mitosis.classification.training import ClassifierTraining, train_classifier
    from napari_mitosis.engine.tissue import TissueMask
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    path = Path(path)
    if path.exists():
        return path
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    sets = []
    for seed, per_class in ((10, 120), (11, 50)):
        slide_path = path.parent / f"demo-classifier-slide-seed{seed}.tif"
        truth = write_synthetic_slide(slide_path, 1024, 1536, mpp=1.0, seed=seed, overwrite=True)
        with open_slide(slide_path) as slide:
            sets.append(
                slide_patches(
                    slide,
                    TissueMask(truth.tumour_mask, (1.0, 1.0)),
                    level=0,
                    patch=64,
                    window=32,
                    per_class=per_class,
                    rng=np.random.default_rng(seed),
                )
            )
        slide_path.unlink()
    config = ClassifierTraining(
        input_size=64, width=16, epochs=4, mpp=1.0, patience=2, device=device, notes=DEMO_NOTES
    )
    report = train_classifier(sets[0], sets[1], path, config, overwrite=True)
    if log:
        print(
            f"demo classifier: validation {report.monitor.upper()} {report.best_value:.3f} "
            f"({time.perf_counter() - started:.0f} s) → {path}"
        )
    return path


def demo_detector(
    path: str | Path,
    *,
    device: str = "auto",
    steps: int = 300,
    train_fields: int = 10,
    log: bool = True,
) -> Path:
    """A MobileNet-v3 Faster R-CNN trained from scratch on synthetic high-power fields
    (~4.5 min on a 2-core CPU for 300 steps)."""
    from napari_mitosis.detection.training import DetectorTraining, train_detector
    from napari_mitosis.io.detections import mask_to_boxes
    from napari_mitosis.samples.synthetic import synthetic_fields

    path = Path(path)
    if path.exists():
        return path
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = synthetic_fields(train_fields + 2, first_seed=200)
    train = [(rgb, mask_to_boxes(t.mitosis_mask).boxes) for rgb, t in fields[:-2]]
    validation = [(rgb, t.mitoses) for rgb, t in fields[-2:]]
    config = DetectorTraining(
        crop=128,
        batch_size=4,
        max_steps=steps,
        eval_every=50,
        patience=3,
        seed=0,
        device=device,
        notes=DEMO_NOTES,
    )
    report = train_detector(train, validation, path, config, overwrite=True)
    if log:
        print(
            f"demo detector: validation F1 {report.best_f1:.3f} "
            f"({time.perf_counter() - started:.0f} s) → {path}"
        )
    return path
