"""A rich progress display for cohort runs (the CLI's and the demo's): one bar for the
slides, one per slide being worked on, counting its tiles stage by stage."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_mitosis.cohort.runner import Event


@contextlib.contextmanager
def cohort_progress(*, quiet: bool = False, console: Any = None) -> Iterator[Event | None]:
    """A rich progress display: one bar for slides, one per slide being worked on.

    The display starts with the run's first event, so a run refused before it starts
    (a bad config) prints only its error. Tile events that arrive after their slide's
    result (worker events travel separately) are ignored.
    """
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    columns = ("{task.description}", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    bars = Progress(*columns, transient=False, console=console)
    slides: Any = None
    tiles: dict[str, Any] = {}
    finished: set[str] = set()

    def on_event(event: dict[str, Any]) -> None:
        nonlocal slides
        kind = event["kind"]
        if kind == "start":
            bars.start()
            slides = bars.add_task("slides", total=event["slides"], completed=event["skipped"])
        elif kind == "tiles" and event["slide"] not in finished:
            key = event["slide"]
            label = f"  {key}: {event['stage']}"
            if key not in tiles:
                tiles[key] = bars.add_task(label, total=event["total"])
            bars.update(
                tiles[key], description=label, total=event["total"], completed=event["done"]
            )
        elif kind == "slide":
            finished.add(event["slide"])
            bars.advance(slides)
            if event["slide"] in tiles:
                bars.remove_task(tiles.pop(event["slide"]))
            if event.get("status") != "ok":
                bars.console.print(f"[red]{event['slide']}: {event.get('error')}")

    try:
        yield on_event
    finally:
        if slides is not None:  # started
            bars.stop()
