"""Cohort runs on a local Dask cluster: resumable, failures reported, numbers equal to
the single-slide API; the run config; the hotspot and OME-Zarr outputs behind them."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from conftest import crop_classifier
from napari_mitosis.classification.run import classify_slide
from napari_mitosis.cohort.config import RUN_CONFIG, read_run_config, settings_from_checkpoints
from napari_mitosis.cohort.runner import (
    run_cohort,
    slide_list,
    slide_names,
    verified_record,
)
from napari_mitosis.detection.run import densest_area, detect_slide
from napari_mitosis.engine.tissue import TissueMask
from napari_mitosis.io.errors import OutputExistsError
from napari_mitosis.io.output_file import atomic_directory, stale_partials
from napari_mitosis.samples.synthetic import write_synthetic_slide


@pytest.fixture(scope="module")
def cohort_slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three small synthetic slides (0.25 µm/px) and a corrupt one."""
    folder = tmp_path_factory.mktemp("cohort-slides")
    slides = []
    for seed in (1, 2, 3):
        path = folder / f"case{seed}.tif"
        write_synthetic_slide(path, 1024, 1536, seed=seed)
        slides.append(path)
    corrupt = folder / "broken.svs"
    corrupt.write_bytes(b"II*\x00" + b"not a slide" * 50)
    return [*slides, corrupt]


@pytest.fixture(scope="module")
def settings(trained_classifier, trained_detector):
    return settings_from_checkpoints(
        [trained_classifier[0], trained_detector[0]], device="cpu", detect_tile=256
    )


def read_summary(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


class Interrupt(Exception):
    pass


def test_cohort_on_two_workers_resumes_reports_failures_and_matches_the_api(
    cohort_slides, settings, tmp_path: Path
) -> None:
    out = tmp_path / "results"

    events: list[dict] = []

    def stop_after_first(event: dict) -> None:
        events.append(event)
        if event["kind"] == "slide" and event["status"] == "ok":
            raise Interrupt  # as if the user pressed Ctrl-C

    with pytest.raises(Interrupt):
        run_cohort(cohort_slides, settings, out, workers=2, on_event=stop_after_first)
    first = read_summary(out / "summary.csv")
    assert len(first) == 1 and first[0]["status"] == "ok"
    finished = first[0]["slide"]
    record = out / finished / "slide.json"
    stamp = record.stat().st_mtime_ns
    # Nothing half-written under a final name: a slide's folder is complete or absent
    # (the other worker may have finished a slide just before the interruption).
    published = [p.stem for p in cohort_slides if (out / p.stem).exists()]
    assert all(verified_record(out / name) for name in published)

    report = run_cohort(cohort_slides, settings, out, workers=2, on_event=events.append)
    assert report.skipped == published and record.stat().st_mtime_ns == stamp
    assert not stale_partials(out)
    rows = {r["slide"]: r for r in read_summary(out / "summary.csv")}
    assert [r["slide"] for r in read_summary(out / "summary.csv")] == [
        p.stem for p in cohort_slides
    ]  # input order
    assert rows["broken"]["status"] == "failed" and "broken.svs" in rows["broken"]["error"]
    assert not (out / "broken").exists()
    # Tile progress is best effort (worker events; the last ones of a run may be dropped
    # when the cluster closes), but it does arrive while slides are being worked on.
    assert any(e["kind"] == "tiles" and e["stage"] in ("classify", "detect") for e in events)
    config = (out / RUN_CONFIG).read_text()
    assert "sha256" in config and "package_version" in config

    # The summary's numbers are what the single-slide API gives for the same slide.
    slide = cohort_slides[1]
    row = rows[slide.stem]
    assert row["status"] == "ok"
    heatmap = classify_slide(slide, settings.classifier, device="cpu", min_tissue=0.3)
    assert float(row["tumour_area_mm2"]) == pytest.approx(heatmap.tumour_area_mm2())
    found = detect_slide(
        slide,
        settings.detector,
        device="cpu",
        within=heatmap.tumour_region(),
        overlap=64,
        tile=256,
    )
    assert int(row["candidate_count"]) == len(found.detections)
    assert float(row["candidates_per_mm2"]) == pytest.approx(found.density()["per_mm2"])
    assert float(row["hotspot_candidates_per_10_hpf"]) == pytest.approx(found.hotspot["per_10_hpf"])
    assert float(row["tissue_area_mm2"]) > float(row["tumour_area_mm2"]) > 0
    folder = out / slide.stem
    boxes = read_summary(folder / f"{slide.stem}.mitoses.csv")
    assert len(boxes) == len(found.detections)
    assert (folder / f"{slide.stem}.tumour.ome.zarr" / "labels" / "tumour_mask").is_dir()

    # A finished slide whose outputs changed is redone; the others are skipped.
    (folder / f"{slide.stem}.mitoses.csv").unlink()
    again = run_cohort(cohort_slides[:3], settings, out, workers=1)
    assert sorted(again.skipped) == sorted(p.stem for p in cohort_slides[:3] if p != slide)
    assert (folder / f"{slide.stem}.mitoses.csv").exists()


def test_cli_run_on_a_scheduler_exit_code_and_a_changed_config_is_refused(
    cohort_slides, settings, tmp_path: Path, capsys
) -> None:
    from napari_mitosis.cli import main

    out = tmp_path / "cli"
    slides = [str(p) for p in (cohort_slides[0], cohort_slides[3])]
    models = [settings.classifier, settings.detector]
    common = ["--models", *models, "--out", str(out), "--device", "cpu", "--no-progress"]
    # An existing cluster, reached by its scheduler's address as a remote one would be.
    from distributed import LocalCluster

    atypical = crop_classifier(tmp_path / "atypical.safetensors", threshold=0.5)
    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        address = ["--scheduler", cluster.scheduler_address, "--subtype", str(atypical)]
        assert main(["run", *slides, *common, "--detect-tile", "256", *address]) == 1
    assert "broken.svs" in capsys.readouterr().err
    assert (out / cohort_slides[0].stem / "slide.json").exists()
    # Each candidate was subtyped; the summary counts the classifier's atypical calls.
    stem = cohort_slides[0].stem
    row = read_summary(out / "summary.csv")[0]
    p = [float(b["p_atypical"]) for b in read_summary(out / stem / f"{stem}.mitoses.csv")]
    assert len(p) == int(row["candidate_count"]) > 0
    from napari_mitosis.io.geojson import read_geojson

    features = read_geojson(out / stem / f"{stem}.mitoses.geojson")
    assert {f.properties["detector"] for f in features} == {Path(settings.detector).name}
    assert int(row["atypical_count"]) == sum(v >= 0.5 for v in p)
    assert float(row["atypical_fraction"]) == pytest.approx(sum(v >= 0.5 for v in p) / len(p))
    per_mm2 = float(row["candidates_per_mm2"]) * int(row["atypical_count"]) / len(p)
    assert float(row["atypical_per_mm2"]) == pytest.approx(per_mm2)
    # Another tile size would mix results in one table: refused, nothing redone.
    assert main(["run", *slides, *common, "--detect-tile", "512"]) == 2
    assert "detect_tile" in capsys.readouterr().err
    # The recorded config reproduces the run (and only runs the slide that failed).
    assert main(["run", slides[0], "--models", str(out / RUN_CONFIG), "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    assert "1 from an earlier run" in capsys.readouterr().out


def test_run_config_round_trip_and_checksum_guard(settings, tmp_path: Path) -> None:
    import shutil

    import yaml

    from napari_mitosis.cohort.config import describe_run

    description = describe_run(settings)
    model = tmp_path / "detector.safetensors"
    shutil.copy(settings.detector, model)
    description["settings"]["detector"] = "detector.safetensors"  # relative to the file
    description["settings"]["classifier"] = None
    description["settings"]["detect_in"] = "tissue"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(description))
    again = read_run_config(config)
    assert again.detector == str(model) and again.detect_tile == 256
    toml = tmp_path / "run.toml"
    toml.write_text('[settings]\ndetector = "detector.safetensors"\ndetect_in = "tissue"\n')
    assert read_run_config(toml, device="cpu").device == "cpu"
    model.write_bytes(Path(settings.classifier).read_bytes())  # another model, same name
    with pytest.raises(ValueError, match="checksum"):
        read_run_config(config)
    toml.write_text('[settings]\ndetector = "detector.safetensors"\ncolour = "red"\n')
    with pytest.raises(ValueError, match="unknown pipeline settings"):
        read_run_config(toml)


def test_slide_lists_and_unique_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "list.txt").write_text("# cohort\na/x.svs\n\n/abs/y.ndpi\n")
    (tmp_path / "list.csv").write_text("patient,slide\np1,a/x.svs\np2,b/x.svs\n")
    paths = slide_list([tmp_path / "list.txt", tmp_path / "z.tif"])
    assert paths == [tmp_path / "a/x.svs", Path("/abs/y.ndpi"), (tmp_path / "z.tif").absolute()]
    twins = slide_list([tmp_path / "list.csv"])
    names = slide_names(twins)
    assert names[0] != names[1] and all(n.startswith("x-") for n in names)
    with pytest.raises(ValueError, match="twice"):
        slide_names([tmp_path / "x.svs", tmp_path / "x.svs"])
    with pytest.raises(ValueError, match="no slides"):
        slide_list([])
    # A results "folder" that is a file is refused before anything is written.
    (tmp_path / "results").write_text("mine")
    from napari_mitosis.cohort.pipeline import PipelineSettings

    settings = PipelineSettings(detector="det.safetensors", detect_in="tissue")
    with pytest.raises(ValueError, match="is a file"):
        run_cohort([tmp_path / "z.tif"], settings, tmp_path / "results")
    assert (tmp_path / "results").read_text() == "mine"


def test_hotspot_is_the_densest_ten_hpf_window() -> None:
    # 4 × 4 mm of tissue in 10 µm cells; a cluster of 6 mitoses in one corner, 2 elsewhere.
    mask = TissueMask(np.ones((400, 400), bool), (10.0, 10.0))
    cluster = np.array([[300 + 40 * i, 300 + 30 * i] for i in range(6)], float)
    scattered = np.array([[3500.0, 3500.0], [3600.0, 200.0]])
    spot = densest_area(np.vstack([cluster, scattered]), mask, (1.0, 1.0))
    assert spot["count"] == 6
    assert spot["area_mm2"] == pytest.approx(2.37, rel=0.01)
    assert spot["per_10_hpf"] == pytest.approx(6.0, rel=0.01)
    # A sliver of tissue with one mitosis does not outrank a large area.
    sliver = np.zeros((400, 400), bool)
    sliver[:200, :200] = True
    sliver[390:, 390:] = True
    points = np.array([[3950.0, 3950.0], [500.0, 500.0], [600.0, 600.0]])
    spot = densest_area(points, TissueMask(sliver, (10.0, 10.0)), (1.0, 1.0))
    assert spot["count"] == 2
    # Smaller than 10 HPF: the whole specimen is the window.
    small = TissueMask(np.ones((50, 50), bool), (10.0, 10.0))
    spot = densest_area(np.array([[100.0, 100.0]]), small, (1.0, 1.0))
    assert spot["count"] == 1 and spot["area_mm2"] == pytest.approx(0.25)


def test_atomic_directory_publishes_whole_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "slide"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "half.csv").write_text("x")
        raise RuntimeError("killed")
    assert not target.exists() and not stale_partials(tmp_path)
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(OutputExistsError), atomic_directory(target):
        pass
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert not stale_partials(tmp_path)


def test_heatmap_as_ome_zarr_reads_back_with_ome_zarr_py(tmp_path: Path) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    from napari_mitosis.io.ome_zarr import write_ome_zarr

    probability = np.linspace(0, 1, 300 * 400, dtype=np.float32).reshape(300, 400)
    mask = (probability > 0.5).astype(np.uint8)
    path = write_ome_zarr(
        tmp_path / "h.ome.zarr",
        probability,
        mpp0=(0.25, 0.25),
        origin_level0=(128.0, 0.0),
        cell_level0=64.0,
        labels={"tumour_mask": mask},
        colours={1: (255, 0, 0, 255)},
        extra={"threshold": 0.5},
    )
    image, _, labels = list(Reader(parse_url(str(path)))())
    assert [a.shape for a in image.data] == [(300, 400), (150, 200)]
    level0 = image.metadata["coordinateTransformations"][0]
    assert level0[0]["scale"] == [16.0, 16.0]
    # Cell (0, 0) covers level-0 px 128–192 (y): its centre sits at 159.5 px = 39.875 µm.
    assert level0[1]["translation"] == [pytest.approx(39.875), pytest.approx(7.875)]
    np.testing.assert_array_equal(np.asarray(image.data[0]), probability)
    assert 0 < float(np.asarray(image.data[1]).mean()) < 1  # averaged, not rounded
    np.testing.assert_array_equal(np.asarray(labels.data[0]), mask)
    with pytest.raises(OutputExistsError):
        write_ome_zarr(tmp_path / "h.ome.zarr", probability)


def test_progress_display_counts_slides_and_ignores_late_tile_events() -> None:
    import io

    from rich.console import Console

    from napari_mitosis.cohort.progress import cohort_progress

    console = Console(file=io.StringIO(), force_terminal=False, width=100)
    with cohort_progress(console=console) as on_event:
        on_event({"kind": "start", "slides": 3, "skipped": 1, "todo": 2})
        on_event({"kind": "tiles", "slide": "a", "stage": "detect", "done": 2, "total": 4})
        on_event({"kind": "slide", "slide": "a", "status": "ok"})
        on_event({"kind": "tiles", "slide": "a", "stage": "detect", "done": 4, "total": 4})
        on_event({"kind": "slide", "slide": "b", "status": "failed", "error": "bad file"})
    text = console.file.getvalue()  # not a terminal: the final state is printed once
    assert "b: bad file" in text and "3/3" in text
    assert "a: detect" not in text  # the late tile event made no new bar
