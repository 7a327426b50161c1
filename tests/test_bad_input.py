"""Given bad input, every entry point says which file and what is wrong, exits 2 (1 for a
slide that failed in a cohort), prints no traceback and writes nothing."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bad_inputs import MODELS, Kind, build_corpus
from napari_mitosis import SlideError
from napari_mitosis._napari.reader import get_reader
from napari_mitosis.cli import main
from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint

CARDS = {
    "classification": ModelCard(
        "small_cnn",
        {"outputs": 1, "width": 4},
        task="classification",
        input_size=64,
        mpp=1.0,
        classes=("normal", "tumour"),
    ),
    "detection": ModelCard(
        "faster_rcnn",
        {"backbone": "mobilenet_v3", "tile": 128},
        task="detection",
        input_size=128,
        mpp=0.25,
        classes=("background", "mitosis"),
    ),
    "segmentation": ModelCard(
        "unet",
        {"base_width": 4, "depth": 2},
        task="segmentation",
        input_size=128,
        mpp=0.25,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    ),
}
TASK_OF = {"classify": "classification", "detect": "detection", "segment": "segmentation"}
#: For the wrong-task kind, each command gets the checkpoint of another task.
WRONG = {"classify": "detection", "detect": "segmentation", "segment": "classification"}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {
        task: save_checkpoint(folder / f"{task}.safetensors", build_model(card), card)
        for task, card in CARDS.items()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cmu_small, dicom_series, checkpoints) -> list[Kind]:
    return build_corpus(tmp_path_factory.mktemp("bad"), cmu_small, dicom_series, checkpoints)


def _kind(corpus: list[Kind], name: str) -> Kind:
    return next(k for k in corpus if k.name == name)


def _names() -> list[str]:
    # The corpus's kind names, known before it is built (for parametrize ids).
    return [
        "empty file",
        "text named .svs",
        "truncated SVS",
        "unsupported TIFF compression",
        "bogus JPEG marker in a tile",
        "DICOM series with a truncated frame file",
        "1×1 PNG",
        "RGBA PNG (composited on white)",
        "8-bit grey PNG",
        "16-bit grey TIFF",
        "float32 RGB TIFF",
        "a directory given as a file",
        "spaces, unicode and emoji in the name",
        "unreadable file (no permission)",
        "a checkpoint that is a pickle",
        "a checkpoint of the wrong task",
    ]


def _model_args(command: str, kind: Kind, checkpoints: dict[str, Path], out: Path) -> list[str]:
    model = checkpoints[TASK_OF[command]]
    if kind.checkpoint == "wrong-task":
        model = checkpoints[WRONG[command]]
    elif kind.checkpoint:
        model = Path(kind.checkpoint)
    args = [command, str(kind.path), "--model", str(model), "--out", str(out), "--mpp", "0.25"]
    extra = ["--all-tiles"] if command == "classify" else []  # noise images hold no tissue
    return [*args, "--device", "cpu", *extra]


def _named(kind: Kind) -> str:
    """The file an error about ``kind`` must name: its bad checkpoint, or the input."""
    return kind.checkpoint if kind.checkpoint and kind.checkpoint != "wrong-task" else ""


def test_the_corpus_has_every_kind_the_entry_points_must_survive(corpus) -> None:
    assert [k.name for k in corpus] == _names() and len(corpus) >= 15


@pytest.mark.parametrize("name", _names())
def test_every_cli_entry_point_names_the_file_and_the_problem(
    name: str, corpus, checkpoints, tmp_path: Path, capsys
) -> None:
    kind = _kind(corpus, name)
    if kind.name.startswith("unreadable") and os.geteuid() == 0:
        pytest.skip("root reads every file: covered by the test without file permissions")
    commands = [["info", str(kind.path)]] if not kind.checkpoint else []
    expected = [kind.on_open] if not kind.checkpoint else []
    for command in MODELS:
        commands.append(_model_args(command, kind, checkpoints, tmp_path / command))
        expected.append(kind.on_model)
    for args, problem in zip(commands, expected, strict=True):
        code = main(args)
        captured = capsys.readouterr()
        out = tmp_path / args[0]
        if problem is None:
            assert code == 0, (args, captured.err)
            continue
        assert code == 2, (args, captured.out, captured.err)
        named = _named(kind) if args[0] in MODELS else ""
        if kind.checkpoint == "wrong-task":
            named = str(checkpoints[WRONG[args[0]]])
        assert f"{named or kind.path}" in captured.err and problem in captured.err, captured.err
        assert "Traceback" not in captured.err
        assert not out.exists() or not any(out.iterdir()), f"{args[0]} wrote {list(out.iterdir())}"


@pytest.mark.parametrize("name", [n for n in _names() if "checkpoint" not in n])
def test_the_napari_reader_names_the_file_and_the_problem(name: str, corpus) -> None:
    kind = _kind(corpus, name)
    if kind.name.startswith("unreadable") and os.geteuid() == 0:
        pytest.skip("root reads every file: covered by the test without file permissions")
    reader = get_reader(str(kind.path))
    if kind.path.is_dir() and kind.on_open is not None:
        assert reader is None  # not a DICOM series: napari says no plugin reads the folder
        return
    if kind.on_open is None:
        layers = reader(str(kind.path))
        assert layers and all(layer[2] in ("image", "labels") for layer in layers)
        if kind.on_read is not None:  # opens lazily; the damaged pixels fail when read
            with pytest.raises(SlideError, match=re.escape(kind.on_read)) as raised:
                np.asarray(layers[0][0][0] if isinstance(layers[0][0], list) else layers[0][0])
            assert str(kind.path) in str(raised.value) or kind.path.is_dir()
        return
    assert reader is not None, "the plugin must claim the file to explain what is wrong"
    with pytest.raises(SlideError, match=re.escape(kind.on_open)) as raised:
        reader(str(kind.path))
    assert str(kind.path) in str(raised.value)


def test_a_cohort_reports_each_bad_slide_as_a_failed_line(
    corpus, checkpoints, tmp_path: Path, capsys
) -> None:
    slides = [k for k in corpus if not k.checkpoint and not k.name.startswith("unreadable")]
    listing = tmp_path / "slides.csv"
    listing.write_text("slide,mpp\n" + "".join(f'"{k.path}",0.25\n' for k in slides))
    out = tmp_path / "results"
    models = [str(checkpoints["classification"]), str(checkpoints["detection"])]
    code = main(["run", str(listing), "--models", *models, "--out", str(out), "--no-progress"])
    assert code == 1  # some slides failed, the others were analysed
    import csv

    with (out / "summary.csv").open() as handle:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(handle)}
    for kind in slides:
        row = rows[kind.path.name]
        if kind.on_model is None:
            assert row["status"] == "ok", row
            assert (Path(row["outputs"]) / "slide.json").is_file()
        else:
            assert row["status"] == "failed" and kind.on_model in row["error"], row
            assert not (out / row["slide"]).exists()  # nothing of a failed slide is left
    assert "Traceback" not in capsys.readouterr().err


def test_without_file_permissions_every_entry_point_says_permission_denied(
    corpus, checkpoints, tmp_path: Path
) -> None:
    """As root every file is readable, so the entry points run in a process that has lost
    the capabilities that bypass file permissions (util-linux ``setpriv``)."""
    kind = _kind(corpus, "unreadable file (no permission)")
    runs = [["info", str(kind.path)]] + [
        _model_args(c, kind, checkpoints, tmp_path / c) for c in MODELS
    ]
    driver = (
        "import json, sys, contextlib, io\n"
        "from napari_mitosis.cli import main\n"
        "from napari_mitosis._napari.reader import get_reader\n"
        "results = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        code = main(args)\n"
        "    results.append([code, err.getvalue()])\n"
        "try:\n"
        "    get_reader(sys.argv[2])(sys.argv[2])\n"
        "    results.append([0, ''])\n"
        "except Exception as e:\n"
        "    results.append([type(e).__name__, str(e)])\n"
        "print(json.dumps(results))\n"
    )
    command = [sys.executable, "-c", driver, json.dumps(runs), str(kind.path)]
    if os.geteuid() == 0:
        drop = "-dac_override,-dac_read_search"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout.splitlines()[-1])
    for (code, err), args in zip(results[:-1], runs, strict=True):
        assert code == 2 and f"{kind.path}: permission denied" in err, (args, err)
        assert "Traceback" not in err
        assert not (tmp_path / args[0]).exists()
    assert results[-1][0] == "SlideNotFoundError" or "permission denied" in results[-1][1]
    assert f"{kind.path}: permission denied" in results[-1][1]


def test_a_cohort_slide_without_micrometres_is_a_failed_line_that_says_how_to_give_them(
    corpus, checkpoints, tmp_path: Path
) -> None:
    from napari_mitosis.cohort.config import settings_from_checkpoints
    from napari_mitosis.cohort.pipeline import PipelineModels
    from napari_mitosis.cohort.runner import process_slide

    settings = settings_from_checkpoints([checkpoints["classification"]], device="cpu")
    models = PipelineModels.load(settings)
    slide = _kind(corpus, "RGBA PNG (composited on white)").path  # a PNG says no µm/px
    row = process_slide(slide, "rgba", tmp_path, settings, models)
    assert row["status"] == "failed" and "does not say its µm/pixel" in row["error"]
    assert "--mpp" in row["error"] and not (tmp_path / "rgba").exists()
    row = process_slide(slide, "rgba", tmp_path, settings, models, mpp=0.25)
    assert row["status"] == "ok", row


def test_a_grey_model_runs_on_the_grey_image_an_rgb_model_refuses(
    corpus, tmp_path: Path, capsys
) -> None:
    grey = _kind(corpus, "8-bit grey PNG").path
    card = ModelCard(
        "small_cnn",
        {"outputs": 1, "width": 4, "in_channels": 1},
        task="classification",
        input_size=32,
        mpp=0.25,
        mean=(0.5,),
        std=(0.25,),
    )
    model = save_checkpoint(tmp_path / "grey.safetensors", build_model(card), card)
    out = tmp_path / "out"
    command = ["classify", str(grey), "--model", str(model), "--out", str(out), "--all-tiles"]
    assert main([*command, "--mpp", "0.25", "--device", "cpu"]) == 0, capsys.readouterr().err
    assert (out / "grey.tumour_probability.tif").is_file()
