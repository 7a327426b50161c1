"""What a run will take, from the tiles it has done: the expected time a user sees before
the bulk of a slow model's run (a ResNeXt on a CPU takes hours over a slide)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 20 s``, ``2 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class TimeEstimate:
    """A progress callback (``done, total`` tiles) that measures tiles per second and,
    once the first ``warmup`` s of work are done, says how long the rest will take —
    once on ``stream``, and as ``text`` for whoever polls it (a widget's status)."""

    #: Seconds of work before the estimate is said: short runs need none.
    WARMUP_S = 2.0

    def __init__(self, what: str = "tiles", *, stream: TextIO | None = None) -> None:
        self.what, self.stream = what, stream
        self.started = time.perf_counter()
        self.first: tuple[int, float] | None = None  # (done, time) after the first batch
        self.text = ""
        self.said = False

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.first is None:  # the first batch pays for start-up: measure from its end
            self.first = (done, now)
            return
        counted, elapsed = done - self.first[0], now - self.first[1]
        if counted <= 0 or elapsed <= 0:
            return
        rate = counted / elapsed
        left = (total - done) / rate
        self.text = f"{done}/{total} {self.what}, {rate:.2g} per s: about {duration(left)} left"
        if not self.said and now - self.started >= self.WARMUP_S and done < total:
            self.said = True
            print(
                f"{total} {self.what} at {rate:.2g} per s (measured on {counted}): about "
                f"{duration(total / rate)} in all, {duration(left)} left",
                file=self.stream or sys.stderr,
                flush=True,
            )
