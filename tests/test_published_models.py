"""Published models run through our engine: WSInfer model folders (TorchScript, or a timm
state dict), TorchScript and ONNX files with our card, the local registry, K-class
heatmaps in every output, and the registry in cohort runs. Every model here is built in
the test from an untrained torchvision or timm network: nothing is downloaded."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
import torchvision
from PIL import Image

from napari_mitosis.cli import main
from napari_mitosis.models.card import ModelCard, build_model, card_schema, card_to_json
from napari_mitosis.models.checkpoint import import_model, load_checkpoint, read_card
from napari_mitosis.models.registry import ModelRegistry

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def wsinfer_folder(
    folder: Path, classes: list[str], *, size: int = 64, spacing: float = 1.0, seed: int = 0
) -> Path:
    """A WSInfer model folder: a random ResNet-18 traced to TorchScript + config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=len(classes)).eval()
    with torch.no_grad():  # probabilities spread over (0, 1), not saturated at 0 or 1
        model.fc.weight.mul_(0.5)
    traced = torch.jit.trace(model, torch.zeros(1, 3, size, size))
    traced.save(str(folder / "torchscript_model.pt"))
    config = {
        "spec_version": "1.0",
        "architecture": "resnet18",
        "num_classes": len(classes),
        "class_names": classes,
        "patch_size_pixels": size,
        "spacing_um_px": spacing,
        "transform": [
            {"name": "Resize", "arguments": {"size": size}},
            {"name": "ToTensor"},
            {"name": "Normalize", "arguments": IMAGENET},
        ],
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def two_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return wsinfer_folder(tmp_path_factory.mktemp("zoo") / "breast-tumor", ["notumor", "tumor"])


@pytest.fixture(scope="module")
def five_class(tmp_path_factory: pytest.TempPathFactory) -> Path:
    names = ["tumor", "stroma", "necrosis", "lymphocytes", "other"]
    return wsinfer_folder(tmp_path_factory.mktemp("zoo") / "tissue-5", names, seed=1)


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    monkeypatch.setenv("NAPARI_MITOSIS_MODELS", str(tmp_path / "registry"))
    return ModelRegistry()


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def wsinfer_reference(slide: Path, model_dir: Path, rows: list[dict[str, str]]) -> np.ndarray:
    """Each patch as WSInfer computes it: OpenSlide level 0 → RGB PIL image →
    torchvision Resize / ToTensor / Normalize → the TorchScript model → softmax."""
    from torchvision import transforms

    config = json.loads((model_dir / "config.json").read_text())
    size = config["patch_size_pixels"]
    transform = transforms.Compose(
        [transforms.Resize(size), transforms.ToTensor(), transforms.Normalize(**IMAGENET)]
    )
    model = torch.jit.load(str(model_dir / "torchscript_model.pt")).eval()
    handle = openslide.OpenSlide(str(slide))
    batch = torch.stack(
        [
            transform(
                handle.read_region(
                    (int(r["minx"]), int(r["miny"])), 0, (int(r["width"]), int(r["height"]))
                ).convert("RGB")
            )
            for r in rows
        ]
    )
    with torch.no_grad():
        return model(batch).softmax(1).numpy()


def test_a_wsinfer_folder_classifies_a_real_slide_with_wsinfers_patches_and_numbers(
    cmu_small: Path, two_class: Path, tmp_path: Path
) -> None:
    card = read_card(two_class)
    assert (card.patching, card.resize, card.mpp, card.input_size) == (
        "wsinfer",
        "pil-bilinear",
        1.0,
        64,
    )
    assert card.classes == ("notumor", "tumor") and card.mean == tuple(IMAGENET["mean"])
    out = tmp_path / "out"
    code = main(["classify", str(cmu_small), "--model", str(two_class), "--out", str(out), "--csv"])
    assert code == 0
    rows = read_csv(out / "CMU-1-Small-Region.patches.csv")
    assert list(rows[0]) == ["minx", "miny", "width", "height", "prob_notumor", "prob_tumor"]
    # WSInfer's rule: round(64 px × 1.0 µm/px ÷ the slide's 0.499 µm/px) = 128 level-0 px,
    # a grid from the origin.
    mpp = openslide.OpenSlide(str(cmu_small)).properties["openslide.mpp-x"]
    side = round(64 * 1.0 / float(mpp))
    assert side == 128
    assert {(int(r["width"]), int(r["height"])) for r in rows} == {(side, side)}
    assert all(int(r["minx"]) % side == 0 and int(r["miny"]) % side == 0 for r in rows)
    assert 50 < len(rows) < 18 * 24  # tissue only
    ours = np.array([[float(r["prob_notumor"]), float(r["prob_tumor"])] for r in rows])
    theirs = wsinfer_reference(cmu_small, two_class, rows[:: max(1, len(rows) // 24)])
    np.testing.assert_allclose(ours[:: max(1, len(rows) // 24)], theirs, atol=1e-4)
    assert ours[:, 1].std() > 0.01  # the comparison is not between constants


def test_k_class_output_is_a_heatmap_per_class_in_every_format(
    cmu_small: Path, five_class: Path, tmp_path: Path
) -> None:
    from napari_mitosis.classification.run import classify_slide
    from napari_mitosis.io.geojson import read_geojson
    from napari_mitosis.io.ome_zarr import read_ome_zarr

    classes = read_card(five_class).classes
    result = classify_slide(cmu_small, five_class, device="cpu")
    assert not result.binary and result.threshold is None
    probabilities = np.asarray(result.probabilities)
    assert probabilities.shape == (5, *result.mask.shape)
    visited = result.visited
    np.testing.assert_allclose(probabilities.sum(0)[visited], 1.0, atol=1e-5)
    np.testing.assert_array_equal(result.mask[visited], probabilities.argmax(0)[visited] + 1)
    assert (result.mask[~visited] == 0).all() and len(np.unique(result.mask[visited])) >= 2

    from napari_mitosis.classification.heatmap_files import write_heatmap

    tiffs = write_heatmap(result, tmp_path, "s", tiles=True)
    names = [p.name for p in tiffs]
    assert names[:5] == [f"s.prob_{c}.tif" for c in classes]
    assert names[5:] == ["s.classes.tif", "s.classes.geojson", "s.patches.geojson"]
    regions = read_geojson(tmp_path / "s.classes.geojson")
    assert {a.classification for a in regions} <= set(classes) and len(regions) >= 2
    assert all(f"mean prob_{c}" in regions[0].measurements for c in classes)
    tiles = read_geojson(tmp_path / "s.patches.geojson")
    assert len(tiles) == int(visited.sum())
    assert all(t.object_type == "detection" for t in tiles)
    assert set(tiles[0].measurements) == {f"prob_{c}" for c in classes}
    written = write_heatmap(result, tmp_path, "z", fmt="ome-zarr")
    grid = read_ome_zarr(written[0])
    assert grid.levels[0].shape == (5, *result.mask.shape)
    assert [c["label"] for c in grid.channels] == list(classes)
    assert grid.label_names["classes"] == {k + 1: c for k, c in enumerate(classes)}
    np.testing.assert_allclose(np.asarray(grid.levels[0]), probabilities)


def test_k_class_ome_zarr_opens_in_napari_as_a_layer_per_class(
    make_napari_viewer, cmu_small: Path, five_class: Path, tmp_path: Path
) -> None:
    from napari_mitosis.classification.heatmap_files import write_heatmap
    from napari_mitosis.classification.run import classify_slide

    result = classify_slide(cmu_small, five_class, device="cpu")
    (path, _) = write_heatmap(result, tmp_path, "cmu", fmt="ome-zarr")
    viewer = make_napari_viewer()
    viewer.open(str(cmu_small), plugin="napari-mitosis")
    layers = viewer.open(str(path), plugin="napari-mitosis")
    classes = result.classes
    assert [layer.name for layer in layers] == [
        *(f"cmu.classes prob {c}" for c in classes),
        "cmu.classes classes",
    ]
    labels = layers[-1]
    assert list(labels.features["class"]) == ["none", *classes]
    # Every class layer sits on the slide: µm, ending at the slide's edge.
    slide = viewer.layers[0]
    for layer in layers:
        assert np.allclose(layer.scale, slide.scale)
        assert layer.data[0].shape == slide.data[0].shape[:2]


def test_the_widget_runs_a_registered_k_class_model(
    make_napari_viewer, qtbot, cmu_small: Path, five_class: Path, registry: ModelRegistry
) -> None:
    from napari_mitosis._napari.classification_widget import ClassificationWidget

    import_model(five_class, name="tissue-5", licence="CC-BY-4.0", registry=registry)
    viewer = make_napari_viewer()
    viewer.open(str(cmu_small), plugin="napari-mitosis")
    widget = ClassificationWidget(viewer)
    assert widget.registered.choices == (None, "tissue-5")
    widget.registered.value = "tissue-5"
    assert "resnet18: classification, 64 px at 1 µm/px" in widget.card_text.value
    assert "licence: CC-BY-4.0" in widget.card_text.value  # the registry's record, shown
    widget.device.value = "cpu"
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 7, timeout=5000)
    names = [layer.name for layer in viewer.layers]
    assert names[1:6] == [f"CMU-1-Small-Region prob {c}" for c in read_card(five_class).classes]
    assert names[6] == "CMU-1-Small-Region classes"
    labels = viewer.layers[6]
    assert labels.features["class"][1] == "tumor"
    # WSInfer patching: 128 level-0 px cells from the origin.
    assert viewer.layers[1].metadata["cell_level0_px"] == 128


def test_the_registry_imports_lists_resolves_verifies_and_removes(
    two_class: Path, registry: ModelRegistry, cmu_small: Path, tmp_path: Path, capsys
) -> None:
    assert main(["models", "import", str(two_class), "--name", "bt", "--licence", "CC-BY"]) == 0
    assert main(["models", "list", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert entry["name"] == "bt" and entry["format"] == "wsinfer" and entry["licence"] == "CC-BY"
    assert entry["classes"] == ["notumor", "tumor"] and entry["mpp"] == 1.0
    digest = entry["sha256"]["torchscript_model.pt"]
    import hashlib

    assert digest == hashlib.sha256((two_class / "torchscript_model.pt").read_bytes()).hexdigest()
    # A name stands for the path everywhere a model is taken.
    assert main(["classify", str(cmu_small), "--model", "bt", "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "CMU-1-Small-Region.tumour_probability.tif").is_file()
    assert main(["models", "info", "bt"]) == 0
    # A changed file is found, and named.
    with (registry.root / "bt" / "config.json").open("a") as handle:
        handle.write(" ")
    assert main(["models", "info", "bt"]) == 1
    assert '"changed_files": [\n  "config.json"' in capsys.readouterr().out
    # Pre-seeding: a copied entry folder is a registered model.
    shutil.copytree(registry.root / "bt", registry.root / "bt-copy")
    assert registry.names() == ["bt", "bt-copy"]
    assert main(["models", "remove", "bt"]) == 0 and registry.names() == ["bt-copy"]
    assert main(["models", "import", str(two_class), "--name", "bt-copy"]) == 2
    assert main(["classify", str(cmu_small), "--model", "nope", "--out", str(tmp_path)]) == 2
    assert "nope: no such model file or registered model" in capsys.readouterr().err


def test_hub_imports_fail_clearly_offline(registry: ModelRegistry, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"could not be downloaded.*offline, copy the model"):
        import_model("hf://kaczmarj/breast-tumor-resnet34.tcga-brca", registry=registry)
    assert registry.names() == []


def test_torchscript_onnx_and_state_dicts_with_our_card_match_the_checkpoint(
    tmp_path: Path,
) -> None:
    pytest.importorskip("onnxruntime")
    from napari_mitosis.classification.run import ClassifierPredictor, classify_images

    card = ModelCard(
        "small_cnn", {"outputs": 1, "width": 4}, task="classification", input_size=64, mpp=1.0
    )
    torch.manual_seed(3)
    model = build_model(card).eval()
    images = [np.random.default_rng(i).integers(0, 255, (80, 80, 3), np.uint8) for i in range(6)]
    expected = classify_images(images, ClassifierPredictor(model, card, "cpu"))
    example = torch.zeros(1, 3, 64, 64)
    torch.jit.trace(model, example).save(str(tmp_path / "ts.pt"))
    torch.onnx.export(
        model,
        example,
        str(tmp_path / "net.onnx"),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    for stem in ("ts", "net", "sd"):
        (tmp_path / f"{stem}.card.json").write_text(card_to_json(card))
    for name in ("ts.pt", "net.onnx", "sd.pt"):
        loaded, loaded_card = load_checkpoint(tmp_path / name, task="classification")
        got = classify_images(images, ClassifierPredictor(loaded, loaded_card, "cpu"))
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=name)
    # A folder with card.json and one model file is a model too.
    (tmp_path / "folder").mkdir()
    shutil.copy(tmp_path / "net.onnx", tmp_path / "folder" / "model.onnx")
    shutil.copy(tmp_path / "net.card.json", tmp_path / "folder" / "card.json")
    assert read_card(tmp_path / "folder") == card
    with pytest.raises(ValueError, match="is a classification model, not a detection"):
        load_checkpoint(tmp_path / "ts.pt", task="detection")


class Payload:
    """Unpickling this runs code: the reason pickles are never loaded."""

    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_a_pickle_beside_a_card_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    card = ModelCard("small_cnn", {"outputs": 1, "width": 4}, task="classification")
    torch.save({"weights": Payload()}, tmp_path / "evil.pt")
    (tmp_path / "evil.card.json").write_text(card_to_json(card))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"evil\.pt: not a plain state dict"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


def test_bad_published_models_are_named(tmp_path: Path, two_class: Path) -> None:
    folder = tmp_path / "bad"
    shutil.copytree(two_class, folder)
    config = json.loads((folder / "config.json").read_text())
    for change, message in (
        ({"num_classes": 3}, "num_classes is 3 but class_names has 2"),
        ({"transform": [{"name": "CenterCrop"}]}, "transform 'CenterCrop' is not one of"),
        ({"spec_version": "2.0"}, "spec '2.0'"),
    ):
        (folder / "config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(ValueError, match=message):
            read_card(folder)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "torchscript_model.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"torchscript_model\.pt"):
        load_checkpoint(folder)
    (tmp_path / "m.card.json").write_text('{"architecture": "small_cnn", "colour": 1}')
    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"m.card.json: unknown model card fields \['colour'\]"):
        read_card(tmp_path / "m.onnx")


def test_a_timm_state_dict_in_a_wsinfer_folder_runs(tmp_path: Path, cmu_small: Path) -> None:
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    from napari_mitosis.classification.run import classify_slide

    folder = wsinfer_folder(tmp_path / "timm", ["a", "b", "c"])
    (folder / "torchscript_model.pt").unlink()
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architecture": "resnet10t"}))
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    save_file(net.state_dict(), str(folder / "model.safetensors"))
    result = classify_slide(
        cmu_small, folder, device="cpu", region=(0, 0, 512, 512), tissue_only=False
    )
    assert result.classes == ("a", "b", "c") and np.asarray(result.probabilities).shape[0] == 3


def test_card_schema_describes_every_field_and_the_docs_publish_it() -> None:
    schema = card_schema()
    assert set(schema["properties"]) == set(ModelCard.__dataclass_fields__)
    docs = (Path(__file__).parents[1] / "docs" / "published-models.md").read_text()
    block = docs.split("```json\n", 1)[1].split("\n```", 1)[0]
    assert json.loads(block) == schema


def test_cohort_runs_record_registered_models_and_refuse_a_changed_one(
    two_class: Path, registry: ModelRegistry, tmp_path: Path, cmu_small: Path
) -> None:
    import yaml

    from napari_mitosis.cohort.config import (
        describe_run,
        read_run_config,
        settings_from_checkpoints,
        write_run_config,
    )

    import_model(two_class, name="bt", registry=registry)
    settings = settings_from_checkpoints(["bt"])  # a name, as `run --models bt` gives it
    assert Path(settings.classifier) == registry.path("bt")
    out = tmp_path / "cohort"
    out.mkdir()
    config = write_run_config(out, describe_run(settings), overwrite=False)
    record = yaml.safe_load(config.read_text())
    model = record["models"]["classifier"]
    assert model["registry"] == "bt" and model["source"] == str(two_class.resolve())
    assert model["classes"] == ["notumor", "tumor"]
    assert model["registry_sha256"] == registry.get("bt").checksum
    # The cohort's one-slide pipeline runs the registered WSInfer model on the real slide
    # and writes its heatmap under the names a two-class model's files have.
    from napari_mitosis.cohort.pipeline import PipelineModels, analyse_slide, write_analysis

    settings = type(settings).from_dict({**settings.as_dict(), "device": "cpu"})
    analysis = analyse_slide(cmu_small, PipelineModels.load(settings), settings)
    assert analysis.heatmap.cell_level0 == 128 and analysis.heatmap.visited.sum() > 50
    written = write_analysis(analysis, tmp_path / "one", "cmu", settings)
    assert {p.name for p in written} >= {"cmu.tumour.ome.zarr", "cmu.tumour.geojson"}
    # A run config naming the model by its registered name resolves it.
    (tmp_path / "by-name.yaml").write_text(yaml.safe_dump({"settings": {"classifier": "bt"}}))
    assert Path(read_run_config(tmp_path / "by-name.yaml").classifier) == registry.path("bt")
    # The registered model changes: a resumed run refuses to mix results, and the
    # recorded checksum no longer matches.
    with (registry.root / "bt" / "config.json").open("a") as handle:
        handle.write(" ")
    with pytest.raises(ValueError, match="other settings or models"):
        write_run_config(out, describe_run(settings), overwrite=False)
    with pytest.raises(ValueError, match="the config records"):
        read_run_config(config)


# Pillow is what WSInfer resizes with; our "pil-bilinear" must be it exactly.
def test_pil_resize_is_torchvisions_resize_on_pil_images() -> None:
    from torchvision.transforms import functional

    from napari_mitosis.classification.predictor import pil_resize

    tiles = np.random.default_rng(0).integers(0, 255, (3, 128, 128, 3), np.uint8)
    ours = pil_resize(tiles, 64)
    for tile, got in zip(tiles, ours, strict=True):
        expected = np.asarray(functional.resize(Image.fromarray(tile), 64))
        np.testing.assert_array_equal(got, expected)
