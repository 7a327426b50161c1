"""Whole-slide jobs for the HTTP service: the cohort's single-slide analysis
(`cohort.runner.process_slide`) on a Dask cluster, recorded in SQLite.

Each job's files are published atomically as ``RESULTS/<job id>/``; the database
``RESULTS/jobs.sqlite`` outlives the server, so a restarted one still lists every job. A
job that was running when the server stopped is marked failed and its partial files are
removed; jobs that were only queued are submitted again. Cancelling sets a Dask `Event`
that the worker checks between batches, so a running slide stops within a batch and
leaves nothing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distributed import WorkerPlugin

from napari_mitosis.cohort.pipeline import PipelineModels, PipelineSettings
from napari_mitosis.cohort.runner import RECORD, process_slide
from napari_mitosis.io.output_file import stale_partials

DATABASE = "jobs.sqlite"
STEPS = ("tissue", "tumour", "mitoses")
ACTIVE = ("queued", "running")
PLUGIN = "napari-mitosis-serve-models"
TOPIC = "napari-mitosis-job"
CANCEL = "napari-mitosis-cancel-{}"
COLUMNS = (
    "id",
    "slide",
    "steps",
    "status",
    "stage",
    "done",
    "total",
    "error",
    "summary",
    "settings",
    "created",
    "updated",
)


class JobError(Exception):
    """A refused job request; ``status`` is the HTTP status that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def slide_under(root: Path, relative: str) -> Path:
    """``relative`` inside ``root``: 403 for absolute paths, ``..`` and symlinks that lead
    out (checked on the resolved path), 404 for a missing file."""
    if not relative or Path(relative).is_absolute() or relative.startswith(("/", "\\")):
        raise JobError(403, f"{relative!r}: give a path relative to the slides folder")
    base = root.resolve()
    path = (base / relative).resolve()
    if not path.is_relative_to(base):
        raise JobError(403, f"{relative!r}: outside the slides folder")
    if not path.is_file():
        raise JobError(404, f"{relative!r}: no such slide")
    return path


class JobStore:
    """The jobs table: one row per job, its state, progress and summary line."""

    def __init__(self, results: Path) -> None:
        results.mkdir(parents=True, exist_ok=True)
        self.results = results
        self._lock = threading.Lock()
        self._db = sqlite3.connect(results / DATABASE, check_same_thread=False)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, slide TEXT, steps TEXT, "
            "status TEXT, stage TEXT, done INTEGER, total INTEGER, error TEXT, summary TEXT, "
            "settings TEXT, created REAL, updated REAL)"
        )
        self._db.commit()

    def add(self, slide: str, steps: Sequence[str], settings: PipelineSettings) -> str:
        job = uuid.uuid4().hex[:12]
        now = time.time()
        with self._lock, self._db:
            self._db.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, 'queued', '', 0, 0, '', '', ?, ?, ?)",
                (job, slide, json.dumps(list(steps)), json.dumps(settings.as_dict()), now, now),
            )
        return job

    def update(self, job: str, **values: Any) -> None:
        names = ", ".join(f"{k} = ?" for k in values)
        with self._lock, self._db:
            self._db.execute(
                f"UPDATE jobs SET {names}, updated = ? WHERE id = ?",  # the names are ours
                (*values.values(), time.time(), job),
            )

    def get(self, job: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job,)).fetchone()
        return None if row is None else _as_record(row)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created").fetchall()
        return [_as_record(r) for r in rows]

    def active(self) -> int:
        with self._lock:
            (count,) = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')"
            ).fetchone()
        return int(count)

    def recover(self) -> list[dict[str, Any]]:
        """After a restart: running jobs failed (their partial files removed), queued ones
        returned for submitting again."""
        for partial in stale_partials(self.results):
            shutil.rmtree(partial, ignore_errors=True)
        queued = []
        for record in self.all():
            if record["status"] == "running":
                shutil.rmtree(self.results / record["id"], ignore_errors=True)
                self.update(
                    record["id"],
                    status="failed",
                    error="the server stopped while this job ran; its partial files were removed",
                )
            elif record["status"] == "queued":
                queued.append(record)
        return queued

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _as_record(row: tuple[Any, ...]) -> dict[str, Any]:
    record = dict(zip(COLUMNS, row, strict=True))
    record["steps"] = json.loads(record["steps"])
    record["summary"] = json.loads(record["summary"]) if record["summary"] else None
    record["settings"] = json.loads(record["settings"])
    return record


def public(record: dict[str, Any]) -> dict[str, Any]:
    """What ``GET /v1/jobs/{id}`` answers."""
    done, total = record["done"], record["total"]
    return {
        "id": record["id"],
        "slide": record["slide"],
        "steps": record["steps"],
        "status": record["status"],
        "stage": record["stage"] or None,
        "progress": round(done / total, 4)
        if total
        else (1.0 if record["status"] == "done" else 0.0),
        "error": record["error"] or None,
        "summary": record["summary"],
        "created": record["created"],
        "updated": record["updated"],
    }


class ServeModels(WorkerPlugin):
    """Dask worker plugin: pipeline models loaded once per worker and model choice."""

    name = PLUGIN

    def __init__(self) -> None:
        self._loaded: dict[tuple[str | None, str | None, str], PipelineModels] = {}

    def models(self, settings: PipelineSettings) -> PipelineModels:
        key = (settings.classifier, settings.detector, settings.device)
        if key not in self._loaded:
            self._loaded[key] = PipelineModels.load(settings)
        return self._loaded[key]


def _job_task(path: str, job: str, out: str, settings: PipelineSettings) -> dict[str, Any]:
    """What a worker runs: the slide's analysis, reporting progress and watching for
    cancellation at most twice a second (each look is a scheduler round trip)."""
    from distributed import Event, get_worker

    worker = get_worker()
    cancel = Event(CANCEL.format(job))
    last = {"progress": 0.0, "cancel": 0.0}
    worker.log_event(TOPIC, {"job": job, "status": "running", "stage": "", "done": 0, "total": 0})

    def progress(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last["progress"] > 0.5:
            last["progress"] = now
            event = {"job": job, "status": "running", "stage": stage, "done": done, "total": total}
            worker.log_event(TOPIC, event)

    def should_stop() -> bool:
        now = time.monotonic()
        if now - last["cancel"] < 0.5:
            return False
        last["cancel"] = now
        return cancel.is_set()

    models = worker.plugins[PLUGIN].models(settings)
    return process_slide(
        path, job, out, settings, models, progress=progress, should_stop=should_stop
    )


@dataclass
class ServedRefs:
    """Which served models a job may use: name → checkpoint path or registry name."""

    classifiers: dict[str, str]
    detectors: dict[str, str]


class JobRunner:
    """Submits jobs to a Dask client, follows them, and keeps the store up to date."""

    def __init__(
        self,
        client: Any,
        slides_root: Path,
        results: Path,
        refs: ServedRefs,
        *,
        device: str = "cpu",
        max_jobs: int = 16,
    ) -> None:
        self.client, self.slides_root, self.results = client, slides_root, results
        self.refs, self.device, self.max_jobs = refs, device, max_jobs
        self.store = JobStore(results)
        self._futures: dict[str, Any] = {}
        client.register_plugin(ServeModels(), name=PLUGIN)
        client.subscribe_topic(TOPIC, self._on_event)
        for record in self.store.recover():
            try:
                path = slide_under(self.slides_root, record["slide"])
            except JobError as err:
                self.store.update(record["id"], status="failed", error=str(err))
                continue
            self._submit(record["id"], path, PipelineSettings(**record["settings"]))

    def settings(
        self, steps: Sequence[str], classifier: str | None, detector: str | None
    ) -> PipelineSettings:
        unknown = sorted(set(steps) - set(STEPS))
        if not steps or unknown:
            raise JobError(400, f"steps must be some of {list(STEPS)}, got {list(steps)}")
        if not {"tumour", "mitoses"} & set(steps):
            raise JobError(400, "a job needs the tumour or mitoses step (tissue is always found)")
        chosen: dict[str, str | None] = {"classifier": None, "detector": None}
        for step, kind, name, served in (
            ("tumour", "classifier", classifier, self.refs.classifiers),
            ("mitoses", "detector", detector, self.refs.detectors),
        ):
            if step not in steps:
                continue
            if not served:
                raise JobError(400, f"the {step} step needs a {kind}, and none is served")
            if name is not None and name not in served:
                raise JobError(404, f"{name}: no such {kind} (served: {', '.join(served)})")
            chosen[kind] = served[name or next(iter(served))]
        return PipelineSettings(
            classifier=chosen["classifier"],
            detector=chosen["detector"],
            detect_in="tumour" if "tumour" in steps else "tissue",
            device=self.device,
        )

    def submit(
        self,
        slide: str,
        steps: Sequence[str],
        classifier: str | None = None,
        detector: str | None = None,
    ) -> str:
        if self.client.status != "running":
            raise JobError(503, "the Dask cluster is not running; jobs cannot start")
        path = slide_under(self.slides_root, slide)
        settings = self.settings(steps, classifier, detector)
        if self.store.active() >= self.max_jobs:
            raise JobError(429, f"the job queue is full ({self.max_jobs} jobs); retry later")
        job = self.store.add(slide, steps, settings)
        self._submit(job, path, settings)
        return job

    def _submit(self, job: str, path: Path, settings: PipelineSettings) -> None:
        future = self.client.submit(
            _job_task, str(path), job, str(self.results), settings, key=f"job-{job}", pure=False
        )
        self._futures[job] = future
        future.add_done_callback(lambda f, job=job: self._finished(job, f))

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        message = event[1]
        record = self.store.get(message["job"])
        if record is None or record["status"] not in ACTIVE:
            return  # a cancelled job's last words
        fields = {k: message[k] for k in ("status", "stage", "done", "total")}
        self.store.update(message["job"], **fields)

    def _finished(self, job: str, future: Any) -> None:
        self._futures.pop(job, None)
        record = self.store.get(job)
        if record is None:
            return
        if record["status"] == "cancelled" or future.cancelled():
            shutil.rmtree(self.results / job, ignore_errors=True)
            self.store.update(job, status="cancelled")
            return
        try:
            row = future.result()
        except Exception as err:  # the worker died, or the task could not run
            self.store.update(job, status="failed", error=f"{type(err).__name__}: {err}")
            return
        if row.get("status") == "ok":
            self.store.update(job, status="done", summary=json.dumps(row, default=str))
        else:
            self.store.update(job, status="failed", error=row.get("error", "failed"))

    def cancel(self, job: str) -> dict[str, Any]:
        record = self.get(job)
        if record["status"] in ACTIVE:
            from distributed import Event

            self.store.update(job, status="cancelled")
            Event(CANCEL.format(job), client=self.client).set()
            future = self._futures.get(job)
            if future is not None and record["status"] == "queued":
                future.cancel()
        return public(self.get(job))

    def get(self, job: str) -> dict[str, Any]:
        record = self.store.get(job)
        if record is None:
            raise JobError(404, f"{job}: no such job")
        return record

    def result_files(self, job: str) -> list[str]:
        """The finished job's files, as paths relative to its folder."""
        record = self.get(job)
        folder = self.results / job
        if record["status"] != "done" or not folder.is_dir():
            raise JobError(404, f"{job}: no results (the job is {record['status']})")
        return sorted(
            p.relative_to(folder).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and p.name != RECORD
        )

    def result_path(self, job: str, name: str) -> Path:
        if name not in self.result_files(job):
            raise JobError(404, f"{job}: no result file {name!r}")
        return self.results / job / name

    def close(self) -> None:
        self.client.unsubscribe_topic(TOPIC)
        self.store.close()
