"""Given an installed package, napari finds a valid manifest and scripts get a Qt-free core."""

from __future__ import annotations

import importlib
import subprocess
import sys


def test_manifest_is_valid_and_every_command_imports() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-mitosis")
    assert manifest.name == "napari-mitosis"
    commands = manifest.contributions.commands or []
    assert {c.id.split(".")[-1] for c in commands} >= {"get_reader", "make_sample_slide"}
    for command in commands:
        module, _, attr = command.python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), command.python_name
    readers = manifest.contributions.readers or []
    patterns = {p for r in readers for p in r.filename_patterns}
    assert {"*.svs", "*.ndpi", "*.mrxs", "*.png", "*.geojson"} <= patterns


def test_the_core_imports_without_napari_or_qt() -> None:
    code = (
        "import sys, napari_mitosis, napari_mitosis.cli;"
        "bad = [m for m in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'magicgui') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_small_models_start_without_torchvision(tmp_path) -> None:
    """torchvision costs ≈2 s of start-up; classifying with a small CNN or segmenting with
    the U-Net never imports it (models are built from `checkpoint.FACTORIES` on use)."""
    from napari_mitosis.checkpoint import FACTORIES, ModelCard, build_model, save_checkpoint
    from napari_mitosis.classifiers import CLASSIFIERS

    listed = {name for name, (module, _) in FACTORIES.items() if module.endswith(".classifiers")}
    assert listed == set(CLASSIFIERS)
    for name in FACTORIES:  # every entry resolves to a factory
        module, factory = FACTORIES[name]
        assert callable(getattr(__import__(module, fromlist=[factory]), factory))
    card = ModelCard("small_cnn", {"outputs": 1}, task="classification", input_size=32)
    path = save_checkpoint(tmp_path / "small.safetensors", build_model(card), card)
    code = (
        "import sys; from napari_mitosis import cli, classification, segmentation;"
        "from napari_mitosis.checkpoint import load_checkpoint;"
        f"load_checkpoint({str(path)!r}, task='classification');"
        "sys.exit(1 if 'torchvision' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
