"""Given an installed package, napari finds a valid manifest and scripts get a Qt-free core
whose public names stay put and whose stages import only the stages below them."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import napari_mitosis

PACKAGE = Path(napari_mitosis.__file__).parent
#: Which subpackages each stage may import (its own included); the napari layer, the demo
#: and the CLI sit on top and may import any stage below them.
ALLOWED = {
    "io": {"io"},
    "models": {"io", "models"},
    "engine": {"io", "models", "engine"},
    "samples": {"io", "samples"},
    "segmentation": {"io", "models", "engine", "segmentation"},
    # detection scores its candidates with crop classifiers (`detection.candidates`)
    "detection": {"io", "models", "engine", "segmentation", "classification", "detection"},
    "classification": {"io", "models", "engine", "classification"},
    "cohort": {"io", "models", "engine", "segmentation", "detection", "classification", "cohort"},
}
ALLOWED["serve"] = {*ALLOWED["cohort"], "serve"}
BELOW_TOP = set(ALLOWED)
ALLOWED["_napari"] = BELOW_TOP | {"_napari"}
ALLOWED["demo"] = BELOW_TOP | {"_napari", "demo"}
ALLOWED["cli"] = BELOW_TOP | {"_napari", "demo", "cli"}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every napari_mitosis import in ``path``, in functions too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "napari_mitosis":
                found += [(node.lineno, f"napari_mitosis.{a.name}") for a in node.names]
            elif node.module.startswith("napari_mitosis."):
                # `from package import submodule` depends on the submodule
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name) for a in node.names if a.name.startswith("napari_mitosis")
            ]
    return found


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


def test_every_stage_imports_only_the_stages_below_it() -> None:
    assert {p.relative_to(PACKAGE).parts[0] for p in _modules()} == set(ALLOWED)
    wrong = []
    for path in _modules():
        stage = path.relative_to(PACKAGE).parts[0]
        for line, module in _imports(path):
            target = module.split(".")[1]
            if target != "__version__" and target not in ALLOWED[stage]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line} imports {module}")
    assert not wrong, wrong


def test_no_module_imports_itself_back_through_others() -> None:
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = ".".join(("napari_mitosis", *path.relative_to(PACKAGE).with_suffix("").parts))
        graph[name.removesuffix(".__init__")] = {m for _, m in _imports(path)}
    for name, targets in graph.items():  # `a.b.name` is module `a.b` unless `name` is a module
        graph[name] = {t if t in graph else t.rpartition(".")[0] for t in targets}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != 1, f"import cycle: {' → '.join([*trail, node, nxt])}"
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_product_code_reads_no_private_napari_attribute() -> None:
    """napari's public API only: an attribute with a leading underscore read off a layer,
    viewer, window, canvas or event (``layer._data_view``, ``viewer._canvas_size``,
    ``window._qt_viewer``) breaks without notice in a napari release."""
    import ast

    owners = {"layer", "layers", "viewer", "window", "canvas", "event", "camera", "dims"}
    found = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            private, owner = None, None
            if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
                owner, private = node.value, node.attr
            elif (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", "") in ("getattr", "hasattr", "setattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
            ):
                owner, private = node.args[0], str(node.args[1].value)
            if owner is None or not private.startswith("_"):
                continue
            name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if not (name.lower().lstrip("_") in owners or name.endswith(("_layer", "_viewer"))):
                private = None
            if private and not private.startswith("__"):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {private}")
    assert not found, found


def test_no_module_is_over_500_lines() -> None:
    sizes = {p.relative_to(PACKAGE): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) <= 500, {str(p): n for p, n in sizes.items() if n > 500}


def test_the_public_api_resolves_every_name_lazily() -> None:
    # In a fresh process: importing the package loads nothing heavy; every public name
    # then resolves to the object its stage defines.
    code = (
        "import sys, napari_mitosis as nm;"
        "heavy = [m for m in ('torch', 'napari', 'openslide') if m in sys.modules];"
        "names = [n for n in nm.__all__ if getattr(nm, n, None) is None];"
        "from napari_mitosis.detection.run import detect_slide;"
        "same = nm.detect_slide is detect_slide and 'detect_slide' in dir(nm);"
        "print(heavy, names, same); sys.exit(0 if same and not heavy and not names else 1)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # the names the README's script quick start uses
    assert {
        "open_slide",
        "segment_slide",
        "detect_slide",
        "classify_slide",
        "analyse_slide",
    } <= set(napari_mitosis.__all__)
    assert {"run_cohort", "load_checkpoint", "write_geojson", "read_geojson"} <= set(
        napari_mitosis.__all__
    )
    try:
        napari_mitosis.no_such_name  # noqa: B018
    except AttributeError as err:
        assert "no_such_name" in str(err)
    else:
        raise AssertionError("an unknown name must raise AttributeError")


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
    from napari_mitosis.models.checkpoint import FACTORIES, ModelCard, build_model, save_checkpoint
    from napari_mitosis.models.classifiers import CLASSIFIERS

    listed = {name for name, (module, _) in FACTORIES.items() if module.endswith(".classifiers")}
    assert listed == set(CLASSIFIERS)
    for name in FACTORIES:  # every entry resolves to a factory
        module, factory = FACTORIES[name]
        assert callable(getattr(__import__(module, fromlist=[factory]), factory))
    card = ModelCard("small_cnn", {"outputs": 1}, task="classification", input_size=32)
    path = save_checkpoint(tmp_path / "small.safetensors", build_model(card), card)
    code = (
        "import sys, napari_mitosis.cli, napari_mitosis.classification.run,"
        " napari_mitosis.segmentation.run;"
        "from napari_mitosis.models.checkpoint import load_checkpoint;"
        f"load_checkpoint({str(path)!r}, task='classification');"
        "sys.exit(1 if 'torchvision' in sys.modules else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
