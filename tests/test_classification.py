"""Given slides with a known tumour region, a user trains a patch classifier and gets a
heatmap and mask that cover that region; small images classify too, scored like the
literature (AUC, sensitivity, specificity, F_med)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import recall_score, roc_auc_score

from conftest import patches_of
from napari_mitosis.classification.data import tumour_mask
from napari_mitosis.classification.heatmap_files import write_heatmap
from napari_mitosis.classification.metrics import best_threshold, binary_metrics
from napari_mitosis.classification.run import ClassifierPredictor, classify_slide
from napari_mitosis.classification.training import ClassifierTraining, train_classifier
from napari_mitosis.cli import main
from napari_mitosis.io.asap_xml import read_asap_xml
from napari_mitosis.io.class_folders import class_folders, split_by_group
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.checkpoint import load_checkpoint

MITOTIC_FIGURES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mitotic-figures"


def test_small_cnn_reaches_auc_above_0_9_on_held_out_tiles(
    trained_classifier, tumour_slides
) -> None:
    path, report = trained_classifier
    model, card = load_checkpoint(path, task="classification")
    assert card.classes == ("normal", "tumour") and card.mpp == 1.0 and card.input_size == 64
    log = path.with_suffix(".csv").read_text().splitlines()
    assert (
        log[0].startswith("epoch,train_loss,lr,val_loss,val_auc")
        and len(log) == len(report.history) + 1
    )
    images, labels = patches_of(tumour_slides[2][0], 60, 2)  # a slide it never saw
    scores = ClassifierPredictor(model, card, "cpu")(images)
    assert roc_auc_score(labels, scores) > 0.9
    # Test-time augmentation averages 8 views and keeps the ranking good.
    tta = ClassifierPredictor(model, card, "cpu", tta=True)(images)
    assert roc_auc_score(labels, tta) > 0.9 and not np.allclose(tta, scores)


def test_stitched_mask_overlaps_the_true_tumour(trained_classifier, tumour_slides) -> None:
    path, _ = trained_classifier
    slide_path, truth = tumour_slides[2]
    result = classify_slide(slide_path, path, device="cpu", stride=32, min_tissue=0.3)
    assert result.heatmap.shape == (32, 48) and result.mpp == (32.0, 32.0)
    cells = truth.tumour_mask[16::32, 16::32]  # each cell's centre pixel
    mask = result.mask.astype(bool)
    dice = 2 * (mask & cells).sum() / (mask.sum() + cells.sum())
    assert dice > 0.7
    # Cells with less than 30 % tissue never reached the model.
    tissue = truth.tissue_mask.reshape(32, 32, 48, 32).mean(axis=(1, 3))
    assert not result.visited[tissue < 0.2].any() and result.visited[tissue > 0.5].all()
    assert result.tumour_area_mm2() == pytest.approx(mask.sum() * 32 * 32 / 1e6)


def test_heatmap_writers_keep_scale_and_refuse_to_overwrite(
    trained_classifier, tumour_slides, tmp_path: Path
) -> None:
    path, _ = trained_classifier
    result = classify_slide(tumour_slides[2][0], path, device="cpu", stride=32)
    paths = write_heatmap(result, tmp_path, "s2")
    with open_slide(paths[0]) as heatmap:
        assert heatmap.mpp == pytest.approx((32.0, 32.0))
        np.testing.assert_allclose(np.asarray(heatmap.levels[0]), result.heatmap, atol=1e-6)
    with open_slide(paths[1]) as mask:
        np.testing.assert_array_equal(np.asarray(mask.levels[0]), result.mask)
    from napari_mitosis.io.geojson import read_geojson

    regions = read_geojson(paths[2])
    assert regions and all(r.classification == "Tumor" for r in regions)
    largest = max(regions, key=lambda r: len(r.coords))
    ys, xs = largest.coords[:, 0], largest.coords[:, 1]
    area = 0.5 * abs(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1)))  # level-0 px²
    assert area == pytest.approx(result.mask.sum() * 32 * 32, rel=0.25)
    with pytest.raises(FileExistsError):
        write_heatmap(result, tmp_path, "s2")
    # A failure while writing leaves none of the three files (and no temporary file).
    broken = type(result)(**{**result.__dict__, "mask": None})
    with pytest.raises((TypeError, AttributeError, ValueError)):
        write_heatmap(broken, tmp_path / "failed", "s2")
    assert not (tmp_path / "failed").exists() or not any((tmp_path / "failed").iterdir())


def test_metrics_agree_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 200), 0, 1)
    m = binary_metrics(labels, scores, 0.5)
    predicted = scores >= 0.5
    assert m.auc == pytest.approx(roc_auc_score(labels, scores))
    assert m.sensitivity == pytest.approx(recall_score(labels, predicted))
    assert m.specificity == pytest.approx(recall_score(1 - labels, ~predicted))
    assert m.f_med == pytest.approx(
        2 * m.sensitivity * m.specificity / (m.sensitivity + m.specificity)
    )
    # The chosen threshold is the F_med maximum over every candidate threshold.
    chosen = binary_metrics(labels, scores, best_threshold(labels, scores)).f_med
    assert chosen == pytest.approx(
        max(binary_metrics(labels, scores, t).f_med for t in np.unique(scores))
    )


def test_asap_xml_and_geojson_polygons_become_the_tumour_mask(
    tumour_slides, tmp_path: Path
) -> None:
    from skimage.measure import find_contours

    slide_path, truth = tumour_slides[0]
    (contour,) = [c for c in find_contours(truth.tumour_mask.astype(float), 0.5) if len(c) > 100]
    coords = "".join(
        f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (y, x) in enumerate(contour)
    )
    hole = (
        '<Coordinate Order="0" X="600" Y="500"/><Coordinate Order="1" X="640" Y="500"/>'
        '<Coordinate Order="2" X="640" Y="540"/><Coordinate Order="3" X="600" Y="540"/>'
    )
    (tmp_path / "s.xml").write_text(
        "<ASAP_Annotations><Annotations>"
        f'<Annotation Name="A1" Type="Polygon" PartOfGroup="Tumor"><Coordinates>{coords}</Coordinates></Annotation>'
        f'<Annotation Name="A2" Type="Polygon" PartOfGroup="_2"><Coordinates>{hole}</Coordinates></Annotation>'
        "</Annotations></ASAP_Annotations>"
    )
    assert [a.classification for a in read_asap_xml(tmp_path / "s.xml")] == ["Tumor", "_2"]
    mask = tumour_mask(open_slide(slide_path), tmp_path / "s.xml").mask
    expected = truth.tumour_mask.copy()
    expected[500:540, 600:640] = False  # the exclusion polygon
    iou = (mask & expected).sum() / (mask | expected).sum()
    assert iou > 0.97 and not mask[510:530, 610:630].any()
    (tmp_path / "bad.xml").write_text("<ASAP_Annotations><Annotations>")
    with pytest.raises(ValueError, match=r"bad\.xml: not valid ASAP XML"):
        read_asap_xml(tmp_path / "bad.xml")


def test_bad_inputs_get_clear_messages(trained_classifier, tmp_path: Path) -> None:
    from napari_mitosis.classification.run import ClassificationRun
    from napari_mitosis.engine.tissue import tissue_mask

    path, _ = trained_classifier
    model, card = load_checkpoint(path)
    predictor = ClassifierPredictor(model, card, "cpu")
    with pytest.raises(ValueError, match=r"\(40 × 30 px\) is smaller than one 64 px patch"):
        ClassificationRun(np.zeros((30, 40, 3), np.uint8), predictor)
    with pytest.raises(ValueError, match="uniform: no tissue"):
        tissue_mask([np.full((256, 256, 3), 240, np.uint8)])
    card3 = type(card)(**{**card.__dict__, "classes": ("a", "b", "c")})
    with pytest.raises(ValueError, match=r"gives 1 output\(s\) but its card names 3 classes"):
        ClassificationRun(
            np.zeros((128, 128, 3), np.uint8), ClassifierPredictor(model, card3, "cpu")
        )
    with pytest.raises(ValueError, match="is a classification model, not a detection model"):
        load_checkpoint(path, task="detection")


def test_two_tower_model_sees_the_patch_and_its_context(tumour_slides, tmp_path: Path) -> None:
    images, labels = patches_of(tumour_slides[0][0], 24, 0, context=4.0)
    assert images.shape == (48, 64, 64, 6)
    # The context half is the same place at 4× less magnification: its centre quarter is the
    # patch, shrunk.
    centre = images[0, 24:40, 24:40, 3:].astype(float)
    shrunk = np.asarray(
        Image.fromarray(images[0, :, :, :3]).resize((16, 16), Image.Resampling.BOX), float
    )
    assert np.abs(centre - shrunk).mean() < 12
    config = ClassifierTraining(
        architecture="two_tower",
        input_size=64,
        width=8,
        epochs=1,
        mpp=1.0,
        context=4.0,
        device="cpu",
    )
    out = tmp_path / "two.safetensors"
    train_classifier((images, labels), (images, labels), out, config)
    result = classify_slide(tumour_slides[2][0], out, device="cpu", region=(256, 256, 512, 512))
    assert result.heatmap.shape == (8, 8) and result.visited.any()


@pytest.mark.parametrize(
    ("architecture", "size"), [("inception_v3", 299), ("wide_resnet", 64), ("small_cnn", 50)]
)
def test_architectures_are_built_without_weights(architecture: str, size: int) -> None:
    import torch

    from napari_mitosis.models.classifiers import CLASSIFIERS

    model = CLASSIFIERS[architecture](outputs=1).eval()
    if architecture == "inception_v3":
        assert isinstance(model.avgpool, torch.nn.AdaptiveMaxPool2d)  # global max pooling
    with torch.inference_mode():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 1)
    grey = CLASSIFIERS["small_cnn"](outputs=1, in_channels=1).eval()
    with torch.inference_mode():
        assert grey(torch.rand(2, 1, 50, 50)).shape == (2, 1)


def test_each_more_small_cnn_block_doubles_what_it_sees(tmp_path: Path) -> None:
    """The span of input one output pixel depends on, measured by its gradient: 38 px at
    four blocks (the default, as cards without ``depth`` were built), 78 at five, 158 at
    six; a trained deeper model keeps its depth in its card."""
    import torch

    from napari_mitosis.models.classifiers import SmallCNN

    torch.manual_seed(0)
    spans = {}
    for depth in (4, 5, 6):
        features = SmallCNN(depth=depth, width=4).eval().features[:-2]  # before the pooling
        x = torch.randn(1, 3, 256, 256, requires_grad=True)
        out = features(x)
        out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
        rows = torch.where(x.grad[0].abs().sum(0).any(1))[0]
        spans[depth] = int(rows.max() - rows.min() + 1)
    assert spans == {4: 38, 5: 78, 6: 158}
    images = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)
    labels = np.tile([0, 1], 4)
    config = ClassifierTraining(width=4, depth=6, input_size=32, epochs=1, device="cpu")
    out = tmp_path / "deep.safetensors"
    train_classifier((images, labels), (images, labels), out, config)
    model, card = load_checkpoint(out, task="classification")
    assert card.options["depth"] == 6 and len(model.features) == 6 * 4 + 2
    shallow = ClassifierTraining(width=4, input_size=32, epochs=1, device="cpu")
    train_classifier((images, labels), (images, labels), tmp_path / "s.safetensors", shallow)
    assert "depth" not in load_checkpoint(tmp_path / "s.safetensors")[1].options
    with pytest.raises(ValueError, match="depth sets small_cnn's blocks; resnet18 has its own"):
        train_classifier((images, labels), (images, labels), tmp_path / "r.safetensors",
                         ClassifierTraining(architecture="resnet18", depth=6, device="cpu"))  # fmt: skip
    assert not (tmp_path / "r.safetensors").exists()


def write_class_folders(root: Path, tumour_slides) -> None:
    """Patch folders with a labels.csv naming each patch's source slide."""
    rows = ["file,slide"]
    for index, (path, _) in enumerate(tumour_slides):
        images, labels = patches_of(path, 20, index)
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            name = f"{'tumour' if label else 'normal'}/s{index}_{i}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / name)
            rows.append(f"{name},slide{index}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


def test_cli_trains_on_class_folders_split_by_slide_and_evaluates(
    tumour_slides, tmp_path: Path, capsys
) -> None:
    data = tmp_path / "patches"
    write_class_folders(data, tumour_slides)
    out = tmp_path / "folder.safetensors"
    args = [
        "train-classifier",
        str(data),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--width",
        "8",
        "--test-fraction",
        "0.34",
        "--val-fraction",
        "0.5",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "40 training, 40 validation, 40 test images (64 px), split by slide" in printed
    assert "AUC" in printed and "F_med" in printed
    test_rows = out.with_suffix(".test.csv").read_text().splitlines()[1:]
    assert len({row.split(",")[1] for row in test_rows}) == 1  # one whole slide held out
    with Image.open(out.with_suffix(".roc.png")) as plot:
        assert plot.format == "PNG"
    assert (
        main(
            [
                "evaluate-classifier",
                str(data),
                "--model",
                str(out),
                "--out",
                str(tmp_path / "ev"),
                "--split-file",
                str(out.with_suffix(".test.csv")),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "held-out: 40 images from 1 groups" in printed
    metrics = json.loads(printed.strip().splitlines()[-1])  # the last line, machine-readable
    assert metrics["n"] == 40 and 0 <= metrics["auc"] <= 1
    assert {"balanced_accuracy", "sensitivity", "specificity", "f1", "f_med", "threshold"} <= set(
        metrics
    )
    assert f"AUC {metrics['auc']:.3f}" in printed  # the same numbers as the table
    assert main(args) == 2  # the checkpoint exists: refused


def test_cli_trains_on_annotated_slides_and_classifies_a_slide(
    tumour_slides, trained_classifier, tmp_path: Path, capsys
) -> None:
    slides = [str(p) for p, _ in tumour_slides[:2]]
    annotations = str(tumour_slides[0][0].parent)
    out = tmp_path / "slides.safetensors"
    assert (
        main(
            [
                "train-classifier",
                *slides,
                "--annotations",
                annotations,
                "--out",
                str(out),
                "--input-size",
                "64",
                "--per-class",
                "20",
                "--epochs",
                "1",
                "--width",
                "8",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert "slide0.tif: 40 patches at level 0" in capsys.readouterr().out
    path, _ = trained_classifier
    result_dir = tmp_path / "heat"
    assert (
        main(
            [
                "classify",
                str(tumour_slides[2][0]),
                "--model",
                str(path),
                "--out",
                str(result_dir),
                "--stride",
                "32",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "cells classified at level 0; tumour" in printed and "mm²" in printed
    assert sorted(p.name for p in result_dir.iterdir()) == [
        "slide2.tumour.geojson",
        "slide2.tumour_mask.tif",
        "slide2.tumour_probability.tif",
    ]
    # OME-Zarr instead: one store with the mask as its label image, on the slide's µm grid.
    zarr_dir = tmp_path / "heat-zarr"
    argv = ["classify", str(tumour_slides[2][0]), "--model", str(path), "--out", str(zarr_dir)]
    assert main([*argv, "--stride", "32", "--device", "cpu", "--format", "ome-zarr"]) == 0
    from napari_mitosis.io.ome_zarr import read_ome_zarr

    grid = read_ome_zarr(zarr_dir / "slide2.tumour.ome.zarr")
    assert grid.levels[0].shape == (32, 48) and grid.scale == (32.0, 32.0)
    assert list(grid.labels) == ["tumour_mask"] and grid.extra["patch_px"] == 64


def test_widget_adds_an_aligned_heatmap_and_mask(
    make_napari_viewer, qtbot, trained_classifier, tumour_slides
) -> None:
    from napari_mitosis._napari.classification_widget import ClassificationWidget

    path, _ = trained_classifier
    viewer = make_napari_viewer()
    viewer.open(str(tumour_slides[2][0]), plugin="napari-mitosis")
    widget = ClassificationWidget(viewer)
    widget.model_path.value = path
    widget.device.value = "cpu"
    widget.stride.value = 32
    widget.show_tissue.value = True
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 4, timeout=5000)
    heatmap = viewer.layers["slide2 tumour probability"]
    mask = viewer.layers["slide2 tumour mask"]
    # Drawn at the slide's own pixel size (1 µm/px), over exactly the slide's pixels: each
    # slide pixel shows the value of the 32 px cell it lies in.
    assert tuple(heatmap.scale) == (1.0, 1.0) and tuple(mask.scale) == (1.0, 1.0)
    assert tuple(heatmap.translate) == (0.0, 0.0)
    assert mask.data[0].shape == (1024, 1536) and widget.status.value.startswith("tumour: ")
    cells = np.asarray(heatmap.data[-1])  # the coarsest level: one pixel per cell
    assert cells.shape == (32, 48) and cells.std() > 0
    np.testing.assert_array_equal(
        np.asarray(heatmap.data[0][40:80:32, 100:140:32]), cells[1:3, 3:5]
    )
    assert "slide2 tissue" in viewer.layers
    # A level chosen by hand: level 1 (2 µm/px) cells are twice as large in µm.
    widget.level.value = 1
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 7, timeout=5000)
    assert viewer.layers[-3].metadata["cell_level0_px"] == 64.0
    widget.level.value = 9
    with pytest.raises(ValueError, match="has 4 pyramid levels"):
        widget.run()
    # Glass with one small stained spot: no cell holds 30 % tissue, and the error says where.
    glass = np.full((512, 512, 3), 245, np.uint8)
    glass[100:110, 100:110] = (150, 60, 140)
    viewer.add_image(glass, rgb=True, name="glass", metadata={"mpp": [1.0, 1.0]})
    widget.image.value = viewer.layers["glass"]
    widget.level.value = -1
    with pytest.raises(ValueError, match=r"^glass: no tile in the region holds 30% tissue"):
        widget.run()


@pytest.mark.skipif(not MITOTIC_FIGURES.exists(), reason="../shared/data is not beside the repo")
def test_real_mitotic_figures_classify_through_the_folder_path(tmp_path: Path) -> None:
    """A small subset of the real AMi-Br crops proves the path on real H&E (the full run
    is benchmarks/train_atypical_mitosis.py)."""
    folder = class_folders(MITOTIC_FIGURES, ("normal", "atypical"))
    assert len(folder.paths) == 1999 and len(np.unique(folder.groups)) == 67
    rest, test = split_by_group(folder.labels, folder.groups, fraction=0.2, seed=0)
    assert not set(folder.groups[rest]) & set(folder.groups[test])  # split by slide
    rng = np.random.default_rng(0)
    pick = lambda idx, n: np.concatenate(  # noqa: E731 - both classes, n each
        [rng.choice(idx[folder.labels[idx] == c], n, replace=False) for c in (0, 1)]
    )
    train, held = pick(rest, 60), pick(test, 20)
    images = folder.load(64, np.concatenate([train, held]), centre_crop=64)  # the figure
    config = ClassifierTraining(
        input_size=64,
        width=8,
        epochs=2,
        device="cpu",
        classes=("normal", "atypical"),
        centre_crop=64,
    )
    out = tmp_path / "amibr.safetensors"
    report = train_classifier(
        (images[:120], folder.labels[train]), (images[120:], folder.labels[held]), out, config
    )
    assert np.isfinite(report.history[-1]["val_auc"]) and out.exists()
    assert json.loads(json.dumps(report.card.metrics))["epoch"] >= 1
    # Whole 128 px crops given to the trained model are centre-cropped as in training.
    from napari_mitosis.classification.run import classify_images

    model, card = load_checkpoint(out)
    predictor = ClassifierPredictor(model, card, "cpu")
    whole = folder.load(None, held[:8])
    assert whole.shape[1:] == (128, 128, 3) and card.centre_crop == 64
    np.testing.assert_allclose(
        classify_images(whole, predictor), predictor(images[120:128]), atol=1e-6
    )


def test_froc_counts_each_lesion_once_and_ignores_isolated_tumour_cells() -> None:
    from napari_mitosis.classification.froc import froc, lesions_from_mask
    from napari_mitosis.engine.tissue import TissueMask

    mask = np.zeros((1000, 1000), bool)
    mask[100:500, 100:500] = True  # a 400 µm lesion (1 µm/px)
    mask[800:850, 800:850] = True  # 50 µm: isolated tumour cells, ignored
    lesions = lesions_from_mask(TissueMask(mask, (1.0, 1.0)), 1.0, dilate_um=0)
    assert lesions.counted == 1 and len(lesions.ignored) == 1
    empty = lesions_from_mask(TissueMask(np.zeros((100, 100), bool), (1.0, 1.0)), 1.0)
    slide_a = (
        np.array([[200, 200], [300, 300], [820, 820], [900, 100]]),
        np.array([0.9, 0.8, 0.7, 0.6]),
        lesions,
    )
    slide_b = (np.array([[50, 50]]), np.array([0.95]), empty)
    result = froc([slide_a, slide_b])
    # 0.95: FP (0.5 per slide); 0.9: the lesion (sensitivity 1); 0.8: same lesion, not
    # counted again; 0.7: ignored; 0.6: FP (1 per slide).
    np.testing.assert_allclose(result.fps_per_slide, [0, 0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(result.sensitivity, [0, 0, 1, 1, 1])
    assert result.at_rates == (0.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert result.score == pytest.approx(5 / 6)


def test_cli_evaluates_slides_against_tumour_annotations(
    trained_classifier, tumour_slides, tmp_path: Path, capsys
) -> None:
    path, _ = trained_classifier
    slide = tumour_slides[2][0]
    assert (
        main(
            [
                "evaluate-classifier",
                str(slide),
                "--annotations",
                str(slide.parent),
                "--model",
                str(path),
                "--out",
                str(tmp_path / "ev"),
                "--device",
                "cpu",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    auc = float(printed.split("AUC ")[1].split()[0])
    froc_score = float(printed.split("FROC ")[1].split()[0])
    assert auc > 0.9 and froc_score == 1.0
    assert (
        json.loads(printed.strip().splitlines()[-1])["froc"] == froc_score
    )  # the one lesion is the most probable candidate
    name, cells, tumour_cells, lesions, candidates = (
        (tmp_path / "ev" / "evaluation.csv").read_text().splitlines()[1].split(",")
    )
    assert name == "slide2.tif" and 0 < int(tumour_cells) < int(cells) and lesions == "1"
    assert int(candidates) >= 1


def test_class_folders_say_which_classes_are_there_and_which_are_not(tmp_path: Path) -> None:
    (tmp_path / "benign").mkdir()
    with pytest.raises(ValueError, match=r"at least two\); found \['benign'\]$"):
        class_folders(tmp_path)
    with pytest.raises(ValueError, match=r"found \['benign'\], but not \['malignant'\]$"):
        class_folders(tmp_path, ("benign", "malignant"))
    with pytest.raises(ValueError, match=r"found none$"):
        class_folders(tmp_path / "benign")


def test_heatmap_layers_end_where_the_slide_ends(
    make_napari_viewer, qtbot, cmu_small, tmp_path
) -> None:
    """CMU-1-Small-Region is 2967 × 2220 px: its last row and column of 32 px cells reach
    past the edges; the heatmap and mask layers still cover exactly the slide's extent."""
    from napari_mitosis._napari.classification_widget import ClassificationWidget
    from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint

    card = ModelCard(
        "small_cnn", {"outputs": 1, "width": 4}, task="classification", input_size=64, mpp=0.5
    )
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(card), card)
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(cmu_small), plugin="napari-mitosis")
    widget = ClassificationWidget(viewer)
    widget.model_path.value = path
    widget.device.value = "cpu"
    widget.min_tissue_fraction.value = 0.0
    worker = widget.run()
    with qtbot.waitSignal(worker.finished, timeout=120_000):
        pass
    qtbot.waitUntil(lambda: len(viewer.layers) == 3, timeout=5000)
    cell = viewer.layers[-1].metadata["cell_level0_px"]
    assert 2967 % cell and 2220 % cell  # cells do overhang both edges
    for layer in viewer.layers[1:]:
        np.testing.assert_allclose(layer.extent.world, image.extent.world)


def test_images_with_an_up_keep_it_under_left_right_flips_and_crops() -> None:
    """Ultrasound has a top (the skin): ``flips="horizontal"`` never turns it over, where
    the histology default does; random crops keep the image's size."""
    from napari_mitosis.classification.training import Augmenter

    image = np.zeros((40, 40, 3), np.uint8)
    image[:20] = 200  # a bright top half
    image[:, :, 2] = np.arange(40, dtype=np.uint8)[None, :] * 6  # a left-right ramp
    still = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, hed_jitter=0.0)
    upright = Augmenter(ClassifierTraining(flips="horizontal", crop_scale=0.6, **still), 3)
    seen = [upright(image) for _ in range(40)]
    assert all(s.shape == image.shape for s in seen)
    assert all(s[:10].mean() > s[-10:].mean() + 100 for s in seen)
    # crops show a part of the image enlarged: neither it nor its mirror image
    cropped = [s for s in seen if not any(np.array_equal(s, v) for v in (image, image[:, ::-1]))]
    assert len(cropped) > 30
    turned = Augmenter(ClassifierTraining(**still), 3)
    assert any(t[:10].mean() < t[-10:].mean() for t in (turned(image) for _ in range(40)))
