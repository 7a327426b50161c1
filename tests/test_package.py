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
