"""Cohort runs: the slide pipeline over many slides on Dask, resumable, one table at the end.

Each slide is one ``dask.distributed`` task. The worker that runs it loads the models
once (a worker plugin keeps them), writes the slide's outputs into a hidden folder and
renames it into ``results/<slide>/`` only when everything, including ``slide.json`` (the
summary line and a checksum of every output), is written. So a resumed run skips slides
whose folder is there and verifies, redoes the rest, and never meets a half-written one.
The client only writes ``summary.csv`` and ``run-config.yaml``.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from napari_mitosis.cohort.config import (
    describe_run,
    sha256_of,
    write_run_config,
)
from napari_mitosis.cohort.pipeline import (
    PipelineModels,
    PipelineSettings,
    analyse_slide,
    write_analysis,
)
from napari_mitosis.io.output_file import atomic_directory, atomic_output, stale_partials

SUMMARY = "summary.csv"
RECORD = "slide.json"
PLUGIN = "napari-mitosis-models"
PROGRESS_TOPIC = "napari-mitosis-progress"
SUMMARY_COLUMNS = (
    "slide",
    "status",
    "tissue_area_mm2",
    "tumour_area_mm2",
    "candidate_count",
    "candidates_in",
    "candidates_per_mm2",
    "hotspot_candidates",
    "hotspot_candidates_per_mm2",
    "hotspot_candidates_per_10_hpf",
    "atypical_count",
    "atypical_per_mm2",
    "atypical_fraction",
    "runtime_s",
    "outputs",
    "error",
    "path",
)
Event = Callable[[dict[str, Any]], None]


# --- slides -------------------------------------------------------------------------------


def slide_entries(items: Sequence[str | Path]) -> list[tuple[Path, float | None]]:
    """(slide, µm/px or None) per slide. A ``.txt`` (one per line) or ``.csv`` (a ``slide``
    or ``path`` column, else the first; an optional ``mpp`` column for slides that do not
    say theirs) entry is a list of slides, relative to its own folder. A folder is a DICOM
    WSI series."""
    entries: list[tuple[Path, float | None]] = []
    for item in items:
        item = Path(item)
        listed: list[tuple[str, str]] = []
        if item.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in item.read_text().splitlines()]
            listed = [(ln, "") for ln in lines if ln and not ln.startswith("#")]
        elif item.suffix.lower() == ".csv":
            with item.open(newline="") as handle:
                rows = list(csv.DictReader(handle))
            if not rows:
                raise ValueError(f"{item}: an empty slide list")
            column = next((c for c in ("slide", "path") if c in rows[0]), next(iter(rows[0])))
            listed = [(row[column], row.get("mpp") or "") for row in rows if row[column]]
        else:
            entries.append((item.absolute(), None))
            continue
        for line, (entry, mpp) in enumerate(listed, start=2):
            path = Path(entry) if Path(entry).is_absolute() else item.parent / entry
            try:
                value = float(mpp) if mpp.strip() else None
            except ValueError:
                raise ValueError(f"{item}: line {line}: mpp {mpp!r} is not a number") from None
            if value is not None and not value > 0:
                raise ValueError(f"{item}: line {line}: mpp must be positive, not {mpp}")
            entries.append((path.absolute(), value))
    if not entries:
        raise ValueError("no slides given")
    return entries


def slide_list(items: Sequence[str | Path]) -> list[Path]:
    """Slide paths of `slide_entries`."""
    return [path for path, _ in slide_entries(items)]


def slide_names(paths: Sequence[Path]) -> list[str]:
    """A results folder name per slide: its stem, made unique with a hash of its path
    when two slides share a stem."""
    stems = [p.name.split(".")[0] or p.name for p in paths]
    names = []
    for path, stem in zip(paths, stems, strict=True):
        if stems.count(stem) > 1:
            stem = f"{stem}-{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        names.append(stem)
    if len(set(names)) != len(names):
        raise ValueError("a slide is listed twice")
    return names


# --- one slide ----------------------------------------------------------------------------


def verified_record(folder: Path) -> dict[str, Any] | None:
    """A finished slide's record if its folder holds every output unchanged, else None."""
    try:
        record = json.loads((folder / RECORD).read_text())
        files = record["files"]
        if all(sha256_of(folder / name) == digest for name, digest in files.items()):
            return record
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def process_slide(
    path: str | Path,
    name: str,
    out: str | Path,
    settings: PipelineSettings,
    models: PipelineModels,
    *,
    mpp: float | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Analyse one slide and publish ``out/<name>/`` atomically; return its summary line.

    Any error becomes the line's ``status``/``error`` (the cohort goes on); nothing of a
    failed slide is left behind. ``mpp``: the slide's µm/px when the file does not say;
    ``should_stop()`` true between batches cancels (status "failed", nothing written).
    """
    started = time.perf_counter()
    folder = Path(out) / name
    row: dict[str, Any] = {"slide": name, "path": str(path)}
    try:
        analysis = analyse_slide(
            path, models, settings, mpp=mpp, progress=progress, should_stop=should_stop
        )
        with atomic_directory(folder, overwrite=True) as tmp:
            written = write_analysis(analysis, tmp, name, settings)
            row.update(analysis.numbers)
            row.update(
                status="ok",
                runtime_s=round(time.perf_counter() - started, 3),
                outputs=str(folder),
                error="",
            )
            files = {p.name: sha256_of(p) for p in written}
            record = {"row": row, "files": files, "settings": settings.as_dict()}
            (tmp / RECORD).write_text(json.dumps(record, indent=1))
    except Exception as err:  # reported in the summary; the run goes on
        row.update(
            status="failed",
            error=f"{type(err).__name__}: {err}",
            runtime_s=round(time.perf_counter() - started, 3),
        )
        row["traceback"] = traceback.format_exc(limit=8)
    return row


# --- on Dask ------------------------------------------------------------------------------


class ModelCache(WorkerPlugin):
    """Dask worker plugin: the pipeline's models, loaded once per worker on first use.

    ``torch_threads`` (local clusters) shares the machine's cores among the workers.
    """

    name = PLUGIN

    def __init__(self, settings: PipelineSettings, torch_threads: int | None = None) -> None:
        self.settings = settings
        self.torch_threads = torch_threads
        self._models: PipelineModels | None = None

    def use_threads(self) -> None:
        """Apply ``torch_threads`` in the calling thread: OpenMP's thread count is per
        thread, and Dask's nanny starts workers with OMP_NUM_THREADS=1, so a setting made
        in `setup` (another thread) would leave the task thread with one core."""
        if self.torch_threads:
            import torch

            torch.set_num_threads(self.torch_threads)

    def teardown(self, worker: Any) -> None:
        self._models = None

    def models(self) -> PipelineModels:
        if self._models is None:
            self._models = PipelineModels.load(self.settings)
        return self._models


def _slide_task(
    path: str, name: str, out: str, settings: PipelineSettings, mpp: float | None = None
) -> dict[str, Any]:
    """What a worker runs per slide: its cached models, progress as worker events."""
    from distributed import get_worker

    worker = get_worker()
    cache = worker.plugins[PLUGIN]
    cache.use_threads()
    models = cache.models()
    last = [0.0]

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.5:
            last[0] = now
            worker.log_event(
                PROGRESS_TOPIC, {"slide": name, "stage": stage, "done": done, "total": total}
            )

    return process_slide(path, name, out, settings, models, mpp=mpp, progress=progress)


@contextlib.contextmanager
def dask_client(
    client: Any = None, scheduler: str | None = None, workers: int | None = None
) -> Iterator[tuple[Any, int | None]]:
    """The given client, one connected to ``scheduler``, or a local cluster of
    ``workers`` processes (default: up to 2); yields (client, torch threads per worker)."""
    if client is not None:
        yield client, None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as connected:
            yield connected, None
        return
    import dask

    cores = os.cpu_count() or 1
    workers = workers or min(2, cores)
    threads = max(cores // workers, 1)
    # Dask's nanny starts workers with OMP_NUM_THREADS=1 and MALLOC_TRIM_THRESHOLD_=64 KiB
    # (made for many small NumPy tasks): the one cost 2× in torch, the other ~11 % per slide
    # here (every freed tile buffer goes back to the OS). One slide per worker wants neither.
    environ = "distributed.nanny.pre-spawn-environ"
    spawn: dict[str, Any] = {f"{environ}.MALLOC_TRIM_THRESHOLD_": None}
    # The statistical profiler walks every thread's stack each 10 ms, holding the GIL.
    spawn["distributed.worker.profile.enabled"] = False
    spawn.update({f"{environ}.{k}_NUM_THREADS": str(threads) for k in ("OMP", "MKL", "OPENBLAS")})
    with (
        dask.config.set(spawn),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: two runs never clash
            silence_logs=40,  # logging.ERROR
        ) as cluster,
        Client(cluster) as local,
    ):
        yield local, threads


@dataclass
class CohortReport:
    """The summary lines (input order) and where they are."""

    rows: list[dict[str, Any]]
    summary: Path
    skipped: list[str]  # finished before this run and verified

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r.get("status") != "ok"]


def write_summary(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_output(path, overwrite=True) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in SUMMARY_COLUMNS})


def run_cohort(
    slides: Sequence[str | Path],
    settings: PipelineSettings,
    out: str | Path,
    *,
    client: Any = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    mpp: float | None = None,
    on_event: Event | None = None,
) -> CohortReport:
    """Run the pipeline on every slide; skip slides a previous run finished.

    ``client`` (a ``distributed.Client``) or ``scheduler`` (its address) uses an existing
    cluster; otherwise a local one with ``workers`` processes is started and closed.
    ``on_event`` gets ``{"kind": "start"|"tiles"|"slide", …}`` dicts for progress displays.
    Raises only for problems with the run itself (bad config, unusable ``out``); a
    failing slide is a line in the summary. ``mpp`` is the µm/px of slides that do not
    say theirs and have none in their slide list's ``mpp`` column.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: is a file; --out needs a results folder")
    entries = slide_entries(slides)
    paths = [path for path, _ in entries]
    given = {path: listed if listed is not None else mpp for path, listed in entries}
    out.mkdir(parents=True, exist_ok=True)
    names = slide_names(paths)
    description = {**describe_run(settings), "slides": list(map(str, paths))}
    if any(v is not None for v in given.values()):  # what slides without µm/px were given
        description["slide_mpp"] = {str(p): v for p, v in given.items() if v is not None}
    write_run_config(out, description, overwrite=overwrite)
    for stale in stale_partials(out):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink()
    emit = on_event or (lambda event: None)
    rows: dict[str, dict[str, Any]] = {}
    skipped, todo = [], []
    for path, name in zip(paths, names, strict=True):
        record = None if overwrite else verified_record(out / name)
        if record is not None:
            rows[name] = record["row"]
            skipped.append(name)
        else:
            todo.append((path, name))
    summary = out / SUMMARY

    def ordered() -> list[dict[str, Any]]:
        return [rows[n] for n in names if n in rows]

    write_summary(summary, ordered())
    emit({"kind": "start", "slides": len(paths), "skipped": len(skipped), "todo": len(todo)})
    if todo:
        from distributed import as_completed

        with dask_client(client, scheduler, workers) as (dask, threads):
            dask.register_plugin(ModelCache(settings, threads), name=PLUGIN)
            dask.subscribe_topic(PROGRESS_TOPIC, lambda event: emit({"kind": "tiles", **event[1]}))
            futures = {
                dask.submit(_slide_task, str(p), n, str(out), settings, given[p], pure=False): (
                    p,
                    n,
                )
                for p, n in todo
            }
            try:
                for future in as_completed(futures):
                    path, name = futures[future]
                    try:
                        row = future.result()
                    except Exception as err:  # the worker died (e.g. a crashing decoder)
                        row = {
                            "slide": name,
                            "path": str(path),
                            "status": "failed",
                            "error": f"{type(err).__name__}: {err}",
                        }
                    rows[name] = row
                    write_summary(summary, ordered())
                    emit({"kind": "slide", **row})
            finally:
                pending = [f for f in futures if not f.done()]
                if pending:
                    dask.cancel(pending)
                with contextlib.suppress(Exception):
                    dask.unsubscribe_topic(PROGRESS_TOPIC)
    return CohortReport(ordered(), summary, skipped)
