"""Given napari or a terminal, a user segments mitoses and gets layers or files back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mitosis._napari.segmentation_widget import SegmentationWidget
from napari_mitosis.cli import main
from napari_mitosis.io.mitos_annotations import write_icpr2012_csv


def configured_widget(viewer, model, image, *, tile: int, overlap: int) -> SegmentationWidget:
    """The widget as a user leaves it before pressing Run (CPU, given tile and overlap)."""
    widget = SegmentationWidget(viewer)
    widget.model_path.value = model
    widget.device.value = "cpu"
    widget.tile.value = tile
    widget.overlap.value = overlap
    if image is not None:
        widget.image.value = image
    return widget


def test_widget_adds_probability_and_labels_at_the_image_scale(
    make_napari_viewer, qtbot, trained_unet, field_pairs, monkeypatch
) -> None:
    path, _ = trained_unet
    rgb, truth = field_pairs[6]
    viewer = make_napari_viewer()
    image = viewer.add_image(
        rgb, rgb=True, scale=(0.25, 0.25), name="hpf", metadata={"mpp": [0.25, 0.25]}
    )
    widget = configured_widget(viewer, path, image, tile=128, overlap=32)
    widget.mpp.value = 0.5  # the image says 0.25: its own wins, and the user is told
    told: list[str] = []
    monkeypatch.setattr("napari_mitosis._napari.tiled_widget.show_warning", told.append)
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=5000)
    assert told == ["hpf says 0.25 µm/px; the 0.5 µm/px given is ignored"]
    probability, labels = viewer.layers["hpf mitosis probability"], viewer.layers["hpf mitoses"]
    assert tuple(labels.scale) == (0.25, 0.25) and tuple(probability.scale) == (0.25, 0.25)
    assert labels.data.shape == rgb.shape[:2]
    for y, x in truth.mitoses.astype(int):
        assert labels.data[y - 3 : y + 4, x - 3 : x + 4].any()
    assert widget.status.value.endswith("mitotic figures")
    assert widget.run_button.enabled


def test_widget_cancel_adds_nothing(make_napari_viewer, qtbot, trained_unet) -> None:
    path, _ = trained_unet
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2048, 2048, 3), np.uint8), rgb=True, name="big")
    widget = configured_widget(viewer, path, None, tile=64, overlap=0)
    # The image does not say its µm/px and the model needs it: the widget asks for it.
    with pytest.raises(ValueError, match=r"big: does not say its µm/pixel.*µm/px field"):
        widget.run()
    assert widget.run_button.enabled and len(viewer.layers) == 1
    widget.mpp.value = 0.25
    widget.run()
    widget.cancel()
    # The worker may stop before a signal wait could start: wait on the widget's state.
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=60_000)
    qtbot.wait(200)
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert widget.status.value.startswith("cancelled")


def test_widget_refuses_a_missing_model(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64, 3), np.uint8), rgb=True)
    widget = SegmentationWidget(viewer)
    widget.model_path.value = Path("/nowhere/model.safetensors")
    with pytest.raises(ValueError, match="choose a U-Net checkpoint"):
        widget.run()


def test_cli_converts_icpr2012_trains_and_segments(
    tmp_path: Path, field_pairs, trained_unet, capsys
) -> None:
    data = tmp_path / "mitos"
    data.mkdir()
    for i, (rgb, truth) in enumerate(field_pairs[:3]):
        Image.fromarray(rgb).save(data / f"A0{i}_00.bmp")
        from skimage.measure import label

        write_icpr2012_csv(data / f"A0{i}_00.csv", label(truth.mitosis_mask))
    assert main(["convert-icpr2012", str(data), "--out", str(tmp_path / "conv")]) == 0
    assert "A00_00.bmp: 3 mitoses, 3 boxes" in capsys.readouterr().out
    assert (tmp_path / "conv" / "A00_00.mask.tif").exists() and (
        tmp_path / "conv" / "A00_00.rle.json"
    ).exists()
    # A second run after the first image's outputs were removed: the other images' outputs
    # exist, so it is refused up front and writes nothing (no partial set for A00_00).
    for suffix in (".mask.tif", ".boxes.csv", ".rle.json"):
        (tmp_path / "conv" / f"A00_00{suffix}").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "conv").iterdir()}
    assert main(["convert-icpr2012", str(data), "--out", str(tmp_path / "conv")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "conv").iterdir()} == before

    out = tmp_path / "cli-unet.safetensors"
    assert (
        main(
            [
                "train-unet",
                str(data),
                "--out",
                str(out),
                "--steps",
                "4",
                "--eval-every",
                "2",
                "--crop",
                "64",
                "--batch-size",
                "2",
                "--base-width",
                "4",
                "--depth",
                "2",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert out.exists() and "best validation Dice" in capsys.readouterr().out

    model, _ = trained_unet
    args = [
        "segment",
        str(data / "A00_00.bmp"),
        "--model",
        str(model),
        "--out",
        str(tmp_path / "seg"),
        "--tile",
        "128",
        "--overlap",
        "32",
        "--min-area",
        "20",
        "--device",
        "cpu",
    ]
    assert main(args) == 2  # a BMP does not say its µm/px, and the U-Net needs it
    assert "A00_00.bmp: does not say its µm/pixel" in capsys.readouterr().err
    args += ["--mpp", "0.25"]
    assert main(args) == 0
    assert "3 mitotic figures" in capsys.readouterr().out
    assert main(args) == 2  # a second run refuses to replace the files
    assert "already exists" in capsys.readouterr().err


def test_cli_pseudo_masks_from_icpr2014_centroids(
    tmp_path: Path, field_pairs, trained_unet, capsys
) -> None:
    data = tmp_path / "atypia"
    data.mkdir()
    rgb, truth = field_pairs[6]
    Image.fromarray(rgb).save(data / "A03_00Aa.png")
    (data / "A03_00Aa_mitosis.csv").write_text(
        "".join(f"{x:.0f},{y:.0f},1\n" for y, x in truth.mitoses)
    )
    model, _ = trained_unet
    assert main(["convert-icpr2014", str(data), "--out", str(tmp_path / "points")]) == 0
    assert (
        main(
            [
                "pseudo-masks",
                str(data),
                "--model",
                str(model),
                "--out",
                str(tmp_path / "pm"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "3 centroids, 0 fell back to a disc" in capsys.readouterr().out
    boxes = (tmp_path / "pm" / "A03_00Aa.boxes.csv").read_text().splitlines()
    assert len(boxes) == 4  # header + one box per centroid


def test_widget_segments_only_inside_a_drawn_rectangle(
    make_napari_viewer, qtbot, trained_unet, field_pairs
) -> None:
    path, _ = trained_unet
    rgb, _ = field_pairs[6]
    viewer = make_napari_viewer()
    image = viewer.add_image(
        rgb, rgb=True, scale=(0.25, 0.25), name="hpf", metadata={"mpp": [0.25, 0.25]}
    )
    # A rectangle drawn in world µm: rows 64–320 px, columns 32–288 px of the field.
    shapes = viewer.add_shapes(
        [np.array([[16, 8], [16, 72], [80, 72], [80, 8]], float)], shape_type="rectangle"
    )
    widget = configured_widget(viewer, path, image, tile=128, overlap=32)
    widget.region.value = "shapes layer box"
    widget.shapes.value = shapes
    widget.run()
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=60_000)
    labels = viewer.layers["hpf mitoses"]
    assert labels.data.shape == (256, 256)
    np.testing.assert_allclose(labels.translate, (16, 8))
    np.testing.assert_allclose(labels.scale, (0.25, 0.25))
