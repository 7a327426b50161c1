"""Given a terminal and no napari window, the command line and the synthetic sample work."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_mitosis import open_slide, read_geojson, synthetic_slide
from napari_mitosis.cli import build_parser, main


def test_info_prints_levels_and_micrometres(cmu_small: Path, capsys) -> None:
    assert main(["info", str(cmu_small)]) == 0
    out = capsys.readouterr().out
    assert "aperio" in out and "0.499 × 0.499 µm/px" in out and "2220 × 2967" in out


def test_info_json_is_machine_readable(cmu_small: Path, capsys) -> None:
    assert main(["info", str(cmu_small), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["mpp"] == [0.499, 0.499] and record["objective_power"] == 20
    assert "properties" not in record


def test_info_into_a_pipe_whose_reader_has_gone_ends_without_a_traceback(cmu_small: Path) -> None:
    """`napari-mitosis info slide | head -1`: the reader closes first; we stop quietly."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first write
    try:
        done = subprocess.run(
            [sys.executable, "-m", "napari_mitosis", "info", str(cmu_small), "--properties"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write_end)
    assert done.returncode in (0, 141), done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr


def test_a_device_that_is_not_one_is_refused_when_parsed(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["serve", "--models", "m.safetensors", "--device", "gpu"])
    assert exit_.value.code == 2
    assert "'gpu' is not a device: auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_errors_exit_2_and_name_the_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.svs"
    assert main(["info", str(missing)]) == 2
    assert f"{missing}: no such file" in capsys.readouterr().err


def test_every_option_of_every_command_is_explained_with_its_default(capsys) -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    undocumented = [
        f"{name} {action.dest}"
        for name, command in commands.choices.items()
        for action in command._actions
        if not action.help
    ]
    assert undocumented == []
    with pytest.raises(SystemExit):
        main(["classify", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "patches per forward pass (default: 16)" in text
    assert "skip cells with less tissue (default: 0.3)" in text
    assert "tumour probability (default: the card's)" in text  # said once, not "None"
    assert "(default: None)" not in text and "(default: False)" not in text


def test_a_region_off_the_slide_or_without_tissue_is_an_error_naming_the_slide(
    cmu_small: Path, tmp_path: Path, capsys
) -> None:
    from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint

    card = ModelCard(
        "small_cnn",
        {"outputs": 1, "width": 4},
        task="classification",
        input_size=64,
        mpp=1.0,
        classes=("n", "t"),
    )
    model = save_checkpoint(tmp_path / "m.safetensors", build_model(card), card)
    out = tmp_path / "out"
    command = ["classify", str(cmu_small), "--model", str(model), "--out", str(out)]
    assert main([*command, "--region=5000,5000,6000,6000"]) == 2
    error = capsys.readouterr().err
    assert f"{cmu_small}: region y0,x0,y1,x1 = 5000,5000,6000,6000 (level-0 px)" in error
    assert "outside the slide, which is 2220 × 2967 px at level 0" in error
    assert main([*command, "--region=100,100,50,400"]) == 2  # empty
    assert "is empty or outside the slide" in capsys.readouterr().err
    assert main([*command, "--min-tissue", "1.01"]) == 2
    assert f"{cmu_small}: no tile in the region holds 101% tissue" in capsys.readouterr().err
    assert not out.exists()  # refused before anything was written


def test_sample_command_writes_a_slide_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.tif"
    assert main(["sample", str(out), "--width", "1024", "--height", "768", "--seed", "1"]) == 0
    slide = open_slide(out)
    assert slide.levels[0].shape == (768, 1024, 3) and slide.mpp == (0.25, 0.25)
    # Its true mitoses beside it, as QuPath points in level-0 pixels: dark chromatin there.
    points = read_geojson(tmp_path / "s.mitoses.geojson")
    told = int(capsys.readouterr().out.split(" mitoses")[0].rsplit(" ", 1)[1])
    assert len(points) == told > 0 and all(p.shape_type == "point" for p in points)
    pixels = np.asarray(slide.levels[0]).mean(axis=-1)
    for point in points:
        y, x = point.coords[0].astype(int)
        assert pixels[y - 2 : y + 3, x - 2 : x + 3].mean() < 90
    before = out.stat().st_mtime_ns
    assert main(["sample", str(out), "--width", "1024", "--height", "768"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert out.stat().st_mtime_ns == before


def test_synthetic_slide_has_its_biology_where_the_truth_says() -> None:
    rgb, truth = synthetic_slide(1024, 1536, seed=5, n_mitoses=6)
    assert rgb.shape == (1024, 1536, 3) and rgb.dtype == np.uint8
    assert 0.3 < truth.tissue_mask.mean() < 0.9  # tissue with glass around it
    assert truth.tumour_mask.any() and not (truth.tumour_mask & ~truth.tissue_mask).any()
    assert len(truth.mitoses) == 6
    glass = rgb[~truth.tissue_mask].mean(axis=0)
    assert (glass > 230).all()  # bright, neutral background
    grey = rgb.mean(axis=-1)
    for y, x in truth.mitoses.astype(int):
        assert truth.tumour_mask[y, x]
        assert grey[y - 2 : y + 3, x - 2 : x + 3].mean() < 90  # dark chromatin
    # Deterministic for a seed, different across seeds.
    again, _ = synthetic_slide(1024, 1536, seed=5, n_mitoses=6)
    np.testing.assert_array_equal(rgb, again)
    assert not np.array_equal(rgb, synthetic_slide(1024, 1536, seed=6, n_mitoses=6)[0])


def test_the_cli_reference_lists_every_command_and_nothing_else() -> None:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    reference = (Path(__file__).parents[1] / "docs" / "cli.md").read_text()
    listed = set(re.findall(r"^\| \w+ \| `([a-z0-9-]+)` \|", reference, flags=re.MULTILINE))
    assert listed == set(commands.choices)


def test_the_demo_classifier_trains_and_says_what_it_reached(tmp_path: Path, capsys) -> None:
    """`make demo` prints each demo model's validation score as it trains it."""
    from napari_mitosis.demo.models import demo_classifier
    from napari_mitosis.models.checkpoint import read_card

    path = demo_classifier(tmp_path / "demo-classifier.safetensors", device="cpu")
    said = re.search(r"demo classifier: validation AUC (\d\.\d{3}) \(", capsys.readouterr().out)
    assert said and float(said.group(1)) > 0.9
    assert read_card(path).task == "classification"
