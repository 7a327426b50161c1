"""Given a recipe file, a training command takes its options from it, flags given on the
command line win, mistakes are named, and the model card records what it all resolved to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mitosis.cli import main, parse
from napari_mitosis.models.checkpoint import read_card
from napari_mitosis.samples.synthetic import synthetic_slide

RECIPES = Path(__file__).parents[1] / "recipes"


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_recipe_resolves_for_its_command(recipe: Path, tmp_path: Path) -> None:
    import yaml

    command = yaml.safe_load(recipe.read_text())["command"]
    args = parse([command, str(tmp_path), "--recipe", str(recipe), "--out", str(tmp_path / "m")])
    for key, value in yaml.safe_load(recipe.read_text()).items():
        if key not in ("command", "description"):
            assert getattr(args, key) == value, key


def test_flags_given_win_over_the_recipe(tmp_path: Path) -> None:
    recipe = RECIPES / "atypical-mitosis.yaml"
    args = parse(
        ["train-classifier", str(tmp_path), "--recipe", str(recipe), "--out", "m", "--lr", "0.01"]
    )
    assert args.lr == 0.01 and args.centre_crop == 64 and args.classes == ["normal", "atypical"]


def test_recipe_mistakes_are_named(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("command: train-classifier\ncentre_crop: 64\nlearning_rat: 0.1\n")
    command = ["train-classifier", str(tmp_path), "--recipe", str(bad), "--out", "m"]
    assert main(command) == 2
    assert f"{bad}: train-classifier has no option learning_rat" in capsys.readouterr().err
    other = tmp_path / "other.yaml"
    other.write_text("command: train-detector\n")
    assert main([*command[:3], str(other), *command[4:]]) == 2
    assert (
        f"{other}: is a recipe for train-detector, not train-classifier" in capsys.readouterr().err
    )
    assert not Path("m").exists()


def test_the_card_records_the_resolved_recipe(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for label, seeds in (("normal", range(0, 12)), ("tumour", range(50, 62))):
        (data / label).mkdir(parents=True)
        for s in seeds:
            Image.fromarray(synthetic_slide(48, 48, seed=s)[0]).save(data / label / f"{s}.png")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "command: train-classifier\nclasses: [normal, tumour]\nwidth: 4\nepochs: 1\n"
        "batch_size: 8\nhed_jitter: 0.1\ntest_fraction: 0\nlr: 0.002\n"
    )
    out = tmp_path / "m.safetensors"
    command = ["train-classifier", str(data), "--recipe", str(recipe), "--out", str(out)]
    assert main([*command, "--epochs", "2", "--device", "cpu"]) == 0
    training = read_card(out).training
    assert training["learning_rate"] == 0.002 and training["hed_jitter"] == 0.1  # the file
    assert training["epochs"] == 2  # the flag
    assert training["data_options"]["test_fraction"] == 0  # how the examples were chosen
    assert training["weight_decay"] == 1e-4  # a default neither gave
    assert np.isclose(training["brightness"], 64 / 255)
