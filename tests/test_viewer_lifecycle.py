"""Given a run in progress in a widget, when its viewer closes, its image layer is removed or
the script that owns the viewer ends, the run stops, adds nothing, and the process exits 0.

Each case runs in its own process under the same virtual display (Qt cannot be torn down
and rebuilt inside the test process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint

SETUP = """
import sys, time
import napari
from qtpy.QtCore import QTimer
from napari_mitosis._napari.classification_widget import ClassificationWidget

viewer = napari.Viewer(show=True)
viewer.open(sys.argv[1], plugin="napari-mitosis")
widget = ClassificationWidget(viewer)
viewer.window.add_dock_widget(widget, name="classification")
widget.model_path.value = sys.argv[2]
widget.device.value = "cpu"
widget.stride.value = 8  # tens of thousands of patches: the run outlasts the case
widget.min_tissue_fraction.value = 0.0
worker = widget.run()
started = time.monotonic()
"""

AFTER = """
def linger(seconds):  # the process goes on (another window, a notebook): Qt keeps running
    app = napari.qt.get_qapp()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)
"""

CASES = {
    "the window closes": """
        QTimer.singleShot(1500, viewer.close)
        napari.run()
        linger(2)
        print("the worker stopped:", not worker.is_running)
    """,
    "the image layer is removed": """
        def look_then_close():
            print("layers at the end:", [layer.name for layer in viewer.layers])
            print("status:", widget.status.value)
            viewer.close()

        def remove():
            viewer.layers.remove(viewer.layers[0])
            QTimer.singleShot(4000, look_then_close)  # time for a late result to arrive
        QTimer.singleShot(1500, remove)
        napari.run()
        linger(2)
    """,
    "the owning script ends": """
        for _ in range(30):  # let the run get going, then fall off the end of the script
            napari.qt.get_qapp().processEvents()
            time.sleep(0.05)
        print("script ends with the worker running:", worker.is_running)
    """,
}


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = ModelCard(
        "small_cnn", {"outputs": 1, "width": 4}, task="classification", input_size=64, mpp=1.0
    )
    path = tmp_path_factory.mktemp("lifecycle") / "classifier.safetensors"
    return save_checkpoint(path, build_model(card), card)


@pytest.mark.parametrize("case", list(CASES))
def test_a_run_survives_its_viewer(case: str, cmu_small: Path, classifier: Path) -> None:
    script = SETUP + AFTER + textwrap.dedent(CASES[case])
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(cmu_small), str(classifier)],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "Fatal Python error" not in output, output[-3000:]
    if case == "the owning script ends":
        assert "with the worker running: True" in output  # the case really ended mid-run
    elif case == "the window closes":
        assert "the worker stopped: True" in output
    else:
        assert "layers at the end: []" in output  # no heatmap arrived for the removed image
        assert "status: cancelled" in output


def test_torchvision_imports_in_a_viewer_drawn_with_mesa() -> None:
    """Under Mesa's OpenGL (Xvfb here), importing Triton after the viewer's canvas exists
    crashes the process; the napari layer keeps it out, so a detector loads."""
    script = (
        "import napari\n"
        "viewer = napari.Viewer(show=False)\n"
        "import napari_mitosis._napari.detection_widget\n"
        "import torchvision.models.detection\n"
        "import sys\n"
        "print('triton blocked:', sys.modules.get('triton', 0) is None)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "triton blocked: True" in result.stdout
