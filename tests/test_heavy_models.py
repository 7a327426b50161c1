"""A CPU user still gets a count from a heavy model: it runs on the hotspot a fast model
finds (`detect --hotspot-from`), and every run says what it will take."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest

from napari_mitosis.cli import main
from napari_mitosis.detection.run import hotspot_region
from napari_mitosis.engine.timing import TimeEstimate, duration
from napari_mitosis.samples.synthetic import write_synthetic_slide


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A slide smaller than 10 HPF (its hotspot square is all of it), tissue and glass."""
    path = tmp_path_factory.mktemp("heavy") / "small.tif"
    write_synthetic_slide(path, 512, 768, mpp=0.25, n_mitoses=3, seed=21)
    return path


def test_the_hotspot_region_is_ten_fields_around_its_centre_inside_the_image() -> None:
    side = round(2.37**0.5 * 1000 / 0.25)  # 10 HPF of 0.237 mm² at 0.25 µm/px: 6158 px
    hotspot = {"centre_y": 10_000.0, "centre_x": 20_000.0}
    assert hotspot_region(hotspot, (0.25, 0.25), (40_000, 50_000)) == (
        10_000 - side // 2, 20_000 - side // 2, 10_000 - side // 2 + side,
        20_000 - side // 2 + side,
    )  # fmt: skip
    near_edge = {"centre_y": 100.0, "centre_x": 49_900.0}  # moved inside, same size
    assert hotspot_region(near_edge, (0.25, 0.25), (40_000, 50_000)) == (
        0, 50_000 - side, side, 50_000,
    )  # fmt: skip
    assert hotspot_region(hotspot, (0.25, 0.25), (3000, 4000)) == (0, 0, 3000, 4000)


def test_the_time_estimate_counts_from_the_first_batch(monkeypatch) -> None:
    clock = iter([0.0, 10.0, 12.0, 14.0])  # start; first batch after 10 s; then 2 s a batch
    monkeypatch.setattr("napari_mitosis.engine.timing.time.perf_counter", lambda: next(clock))
    out = io.StringIO()
    estimate = TimeEstimate("tiles", stream=out)
    estimate(8, 808)  # the first batch: start-up, not measured
    estimate(16, 808)  # 8 tiles in 2 s: 4 per s, 792 left → 198 s
    assert (
        out.getvalue()
        == "808 tiles at 4 per s (measured on 8): about 3 min 22 s in all, 3 min 18 s left\n"
    )
    estimate(24, 808)
    assert out.getvalue().count("\n") == 1 and estimate.text.endswith("about 3 min 16 s left")
    assert (duration(42), duration(7500)) == ("42 s", "2 h 05 min")


def test_detect_runs_the_model_on_the_hotspot_a_fast_model_finds(
    small_slide, trained_detector, tmp_path: Path, capsys, monkeypatch
) -> None:
    sample = SimpleNamespace(path=small_slide)
    monkeypatch.setattr(TimeEstimate, "WARMUP_S", 0.0)  # say it however fast this machine is
    out = tmp_path / "out"
    model = str(trained_detector[0])
    args = ["detect", str(sample.path), "--model", model, "--hotspot-from", model]
    assert main([*args, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert f"hotspot by {model}:" in printed.out and "runs on region 0,0,512,768" in printed.out
    assert (out / f"{sample.path.stem}.mitoses.geojson").exists()
    assert "tiles at" in printed.err and "left" in printed.err  # the time it takes, said
    both = [*args, "--region", "0,0,512,512", "--out", str(tmp_path / "again")]
    assert main(both) == 2
    assert "give --region or --hotspot-from, not both" in capsys.readouterr().err


def test_the_detection_widget_runs_a_model_on_the_last_runs_hotspot(
    make_napari_viewer, qtbot, trained_detector, small_slide
) -> None:
    """Whole tissue with one model, then "hotspot of the last run" with another: the
    second sees only the first's 10-HPF square (here the whole slide: it is smaller)."""
    from napari_mitosis._napari.detection_widget import DetectionWidget

    viewer = make_napari_viewer()
    (image,) = viewer.open(str(small_slide), plugin="napari-mitosis")
    widget = DetectionWidget(viewer)
    widget.model_path.value, widget.device.value = trained_detector[0], "cpu"
    widget.image.value = image
    widget.region.value = "hotspot of the last run"
    with pytest.raises(ValueError, match="no hotspot yet: run a fast detector"):
        widget.run()
    widget.region.value = "whole tissue"
    with qtbot.waitSignal(widget.run().finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=5000)
    assert widget.last_hotspot == (0, 0, 512, 768) and "hotspot" in widget.status.value
    first = len(viewer.layers[-1].data)
    widget.region.value = "hotspot of the last run"
    with qtbot.waitSignal(widget.run().finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=5000)
    # the whole slide, where the first counted only tissue: at least as many candidates
    assert len(viewer.layers[-1].data) >= first > 0 and widget.tissue is None
