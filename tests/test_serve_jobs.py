"""Whole-slide jobs over HTTP: a job runs the cohort's slide analysis on Dask and serves
its files; slide paths cannot leave the slides folder; the queue has a limit; Cancel leaves
nothing; and a restarted server lists its jobs, fails the one that was running (removing
its partial files) and runs the queued one."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from napari_mitosis.cohort.pipeline import PipelineSettings
from napari_mitosis.serve.app import create_app, load_served, served_refs
from napari_mitosis.serve.jobs import JobRunner, JobStore


@pytest.fixture(scope="module")
def dask():
    from distributed import Client

    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as c:
        yield c


@pytest.fixture(scope="module")
def served(trained_classifier, trained_detector):
    return load_served([str(trained_classifier[0]), str(trained_detector[0])], device="cpu")


def make_app(dask, served, slides: Path, results: Path, **options) -> tuple[TestClient, JobRunner]:
    runner = JobRunner(dask, slides, results, served_refs(served), device="cpu", **options)
    return TestClient(create_app(served, jobs=runner)), runner


def wait(client: TestClient, job: str, until=("done", "failed", "cancelled")) -> dict:
    for _ in range(600):
        status = client.get(f"/v1/jobs/{job}").json()
        if status["status"] in until:
            return status
        time.sleep(0.2)
    pytest.fail(f"job {job} did not finish: {status}")


def test_a_job_runs_the_slide_pipeline_and_serves_its_files(dask, served, tmp_path: Path) -> None:
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    slides = tmp_path / "slides"  # at the detector's 0.25 µm/px; the classifier reads 1
    slides.mkdir()
    write_synthetic_slide(slides / "slide2.tif", 1024, 1536, mpp=0.25, seed=2)
    client, runner = make_app(dask, served, slides, tmp_path / "results")
    answer = client.post("/v1/jobs", json={"slide": "slide2.tif", "steps": ["tumour", "mitoses"]})
    assert answer.status_code == 202, answer.text
    job = answer.json()["id"]
    status = wait(client, job)
    assert status["status"] == "done", status
    assert status["progress"] == 1.0 and status["stage"] == "detect"
    files = client.get(f"/v1/jobs/{job}/results").json()["files"]
    assert "job.mitoses.geojson".replace("job", job) in files
    assert any(name.startswith(f"{job}.tumour") for name in files)
    served_file = client.get(f"/v1/jobs/{job}/results/{job}.mitoses.geojson")
    on_disk = (tmp_path / "results" / job / f"{job}.mitoses.geojson").read_bytes()
    assert served_file.status_code == 200 and served_file.content == on_disk
    features = json.loads(on_disk)["features"]
    assert status["summary"]["candidate_count"] == len(features)
    assert status["summary"]["tumour_area_mm2"] > 0  # the synthetic slide has tumour
    assert client.get(f"/v1/jobs/{job}/results/slide.json").status_code == 404
    assert client.get(f"/v1/jobs/{job}/results/..%2F..%2Fjobs.sqlite").status_code == 404
    assert [j["id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job]
    runner.close()


def test_slide_paths_steps_and_the_queue_are_checked(
    dask, served, tumour_slides, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.tif"
    outside.write_bytes(b"II*\0")
    link = tmp_path / "slides"
    link.mkdir()
    shutil.copy(tumour_slides[2][0], link / "inside.tif")
    (link / "escape.tif").symlink_to(outside)
    client, runner = make_app(dask, served, link, tmp_path / "results", max_jobs=1)
    for path in ("../secret.tif", "/etc/passwd", str(outside), "escape.tif", "a/../../secret.tif"):
        refused = client.post("/v1/jobs", json={"slide": path})
        assert refused.status_code == 403, (path, refused.text)
        assert "slides folder" in refused.json()["error"]
    assert client.post("/v1/jobs", json={"slide": "missing.tif"}).status_code == 404
    bad_steps = client.post("/v1/jobs", json={"slide": "inside.tif", "steps": ["dance"]})
    assert bad_steps.status_code == 400 and "steps must be some of" in bad_steps.json()["error"]
    only_tissue = client.post("/v1/jobs", json={"slide": "inside.tif", "steps": ["tissue"]})
    assert only_tissue.status_code == 400
    unknown = client.post("/v1/jobs", json={"slide": "inside.tif", "detector": "nope"})
    assert unknown.status_code == 404 and "nope: no such detector" in unknown.json()["error"]
    first = client.post("/v1/jobs", json={"slide": "inside.tif"})
    assert first.status_code == 202
    full = client.post("/v1/jobs", json={"slide": "inside.tif"})
    assert full.status_code == 429 and full.headers["retry-after"]
    assert "queue is full" in full.json()["error"]
    job = first.json()["id"]
    cancelled = client.delete(f"/v1/jobs/{job}").json()
    assert cancelled["status"] == "cancelled"
    time.sleep(0.5)
    for _ in range(300):  # the worker stops within a batch; nothing of the job stays
        if job not in runner._futures:
            break
        time.sleep(0.2)
    assert wait(client, job)["status"] == "cancelled"
    assert not (tmp_path / "results" / job).exists()
    assert client.get(f"/v1/jobs/{job}/results").status_code == 404
    assert client.get("/v1/jobs/nope").status_code == 404
    assert client.delete("/v1/jobs/nope").status_code == 404
    runner.close()
    no_jobs = TestClient(create_app(served))
    off = no_jobs.post("/v1/jobs", json={"slide": "inside.tif"})
    assert off.status_code == 503 and "--slides-root" in off.json()["error"]


def test_a_restarted_server_fails_the_running_job_and_runs_the_queued_one(
    dask, served, trained_detector, tmp_path: Path
) -> None:
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    slides = tmp_path / "slides"  # a small slide at the detector's own 0.25 µm/px
    slides.mkdir()
    write_synthetic_slide(slides / "small.tif", 512, 768, mpp=0.25, seed=5)
    results = tmp_path / "results"
    store = JobStore(results)
    settings = PipelineSettings(detector=str(trained_detector[0]), detect_in="tissue", device="cpu")
    running = store.add("small.tif", ["mitoses"], settings)
    queued = store.add("small.tif", ["mitoses"], settings)
    store.update(running, status="running", stage="detect", done=3, total=9)
    (results / running).mkdir()
    (results / running / "half.geojson").write_text("{")
    (results / f".{queued}.abc.partial").mkdir()  # an unpublished folder of a killed run
    store.close()
    client, runner = make_app(dask, served, slides, results)
    failed = client.get(f"/v1/jobs/{running}").json()
    assert failed["status"] == "failed" and "server stopped" in failed["error"]
    assert not (results / running).exists()
    assert not list(results.glob(".*.partial"))
    done = wait(client, queued)
    assert done["status"] == "done" and done["summary"]["candidates_in"] == "tissue"
    assert f"{queued}.mitoses.geojson" in client.get(f"/v1/jobs/{queued}/results").json()["files"]
    assert {j["id"] for j in client.get("/v1/jobs").json()["jobs"]} == {running, queued}
    runner.close()
