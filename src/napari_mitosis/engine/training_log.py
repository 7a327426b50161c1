"""Bookkeeping every trainer shares: early stopping on a validation metric, and the
per-evaluation CSV log beside the checkpoint. Written once, so trainers stay about models."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from napari_mitosis.io.output_file import atomic_output


class EarlyStopping:
    """Tracks the best value of a higher-is-better metric; stops after ``patience`` misses."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError(f"patience must be ≥ 1, got {patience}")
        self.patience = patience
        self.best = float("-inf")
        self.best_step = 0
        self.stale = 0

    def improved(self, value: float, step: int) -> bool:
        """Record one evaluation; True when it is the best so far (save a checkpoint)."""
        if value > self.best:
            self.best, self.best_step, self.stale = value, step, 0
            return True
        self.stale += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.stale >= self.patience


def write_history(path: Path, history: Sequence[dict[str, float]]) -> Path:
    """The per-evaluation metrics as CSV (one row per evaluation), atomically."""
    with atomic_output(path, overwrite=True) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    return path
