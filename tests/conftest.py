"""Fixtures: slides with a known answer, built with tifffile, and the real shared samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CMU_SMALL = SHARED_DATA / "slides" / "CMU-1-Small-Region.svs"


def gradient_rgb(height: int, width: int) -> np.ndarray:
    """Pixels whose value says where they are: R = y mod 251, G = x mod 253, B = (x+y) mod 255."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([yy % 251, xx % 253, (yy + xx) % 255], axis=-1).astype(np.uint8)


@pytest.fixture(scope="session")
def pyramid_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-level tiled RGB pyramid, separate pages, lossless, 0.5 µm/px, written by tifffile
    directly (not by our writer), so reader tests do not lean on our own writer."""
    path = tmp_path_factory.mktemp("pyramid") / "gradient.tif"
    image = gradient_rgb(1000, 1500)  # not a multiple of the tile size on purpose
    with tifffile.TiffWriter(path) as tif:
        for level in range(3):
            data = image[:: 2**level, :: 2**level]
            res = 1e4 / (0.5 * 2**level)
            tif.write(
                data,
                tile=(256, 256),
                photometric="rgb",
                compression="zlib",
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
            )
    return path


@pytest.fixture(scope="session")
def cmu_small() -> Path:
    if not CMU_SMALL.exists():
        pytest.skip(f"{CMU_SMALL} is not here (../shared/data is beside the repo in CI)")
    return CMU_SMALL


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic H&E slide with known mitoses (generated once per test run)."""
    from napari_mitosis.samples.synthetic import ensure_sample_slide

    return ensure_sample_slide(tmp_path_factory.mktemp("sample"), height=1024, width=1536, seed=3)


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, tuple[int, int]]]:
    """Record every pixel read of a slide level, decoded by us or by OpenSlide, as
    (level, (width, height))."""
    from napari_mitosis.io.openslide_source import OpenSlideHandle

    calls: list[tuple[int, tuple[int, int]]] = []
    original = OpenSlideHandle.read_level

    def counting(self, level, y0, y1, x0, x1):  # type: ignore[no-untyped-def]
        calls.append((level, (x1 - x0, y1 - y0)))
        return original(self, level, y0, y1, x0, x1)

    monkeypatch.setattr(OpenSlideHandle, "read_level", counting)
    return calls


@pytest.fixture(scope="session")
def field_pairs():
    """Synthetic high-power fields (0.25 µm/px) with exact mitosis masks and look-alikes."""
    from napari_mitosis.samples.synthetic import synthetic_fields

    return synthetic_fields(7)


@pytest.fixture(scope="session")
def trained_unet(field_pairs, tmp_path_factory: pytest.TempPathFactory):
    """A small U-Net trained for 150 steps on CPU (~25 s); returns (checkpoint, report)."""
    from napari_mitosis.segmentation.training import UNetTraining, train_unet

    train = [(rgb, t.mitosis_mask) for rgb, t in field_pairs[:4]]
    val = [(rgb, t.mitosis_mask) for rgb, t in field_pairs[4:6]]
    config = UNetTraining.small(
        batch_size=8, patience=3, seed=0, device="cpu", notes="test model, synthetic data"
    )
    path = tmp_path_factory.mktemp("unet") / "unet.safetensors"
    return path, train_unet(train, val, path, config)


@pytest.fixture(scope="session")
def trained_detector(field_pairs, tmp_path_factory: pytest.TempPathFactory):
    """A MobileNet Faster R-CNN trained from scratch for ≤300 steps on CPU (~2 min);
    returns (checkpoint, report). Shared by the accuracy, CLI and widget tests."""
    from napari_mitosis.detection.training import DetectorTraining, train_detector
    from napari_mitosis.io.detections import mask_to_boxes

    train = [(rgb, mask_to_boxes(t.mitosis_mask).boxes) for rgb, t in field_pairs[:4]]
    validation = [(rgb, t.mitoses) for rgb, t in field_pairs[4:6]]
    config = DetectorTraining(
        crop=128,
        batch_size=4,
        max_steps=300,
        eval_every=50,
        patience=1,  # its best is step 150 here; the first evaluation without a gain ends it
        seed=0,
        device="cpu",
        notes="test model, synthetic data",
    )
    path = tmp_path_factory.mktemp("detector") / "detector.safetensors"
    return path, train_detector(train, validation, path, config)


@pytest.fixture(scope="session")
def tumour_slides(tmp_path_factory: pytest.TempPathFactory):
    """Three synthetic slides at 1 µm/px (train, validation, test) with tumour mask PNGs."""
    from PIL import Image

    from napari_mitosis.samples.synthetic import write_synthetic_slide

    folder = tmp_path_factory.mktemp("tumour")
    slides = []
    for seed in range(3):
        path = folder / f"slide{seed}.tif"
        truth = write_synthetic_slide(path, 1024, 1536, mpp=1.0, seed=seed)
        Image.fromarray(truth.tumour_mask.astype(np.uint8) * 255).save(
            folder / f"slide{seed}_mask.png"
        )
        slides.append((path, truth))
    return slides


def bright_squares(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """16 px images: a bright square (class 1) or none (class 0) on noise, alternating."""
    rng = np.random.default_rng(seed)
    labels = np.tile([0, 1], n // 2)
    images = rng.integers(0, 80, (n, 16, 16, 3), dtype=np.uint8)
    images[labels == 1, 4:12, 4:12] = 220
    return images, labels


def patches_of(path: Path, per_class: int, seed: int, **options):
    """Balanced 64 px patches (32 px cells) of a synthetic slide with a mask PNG beside it."""
    from napari_mitosis.classification.data import slide_patches, tumour_mask
    from napari_mitosis.io.formats import open_slide

    slide = open_slide(path)
    mask = tumour_mask(slide, path.with_name(f"{path.stem}_mask.png"))
    return slide_patches(
        slide,
        mask,
        level=0,
        patch=64,
        window=32,
        per_class=per_class,
        rng=np.random.default_rng(seed),
        **options,
    )


@pytest.fixture(scope="session")
def trained_classifier(tumour_slides, tmp_path_factory: pytest.TempPathFactory):
    """A small CNN trained for ≤4 epochs on one slide, early-stopped on another (~20 s)."""
    from napari_mitosis.classification.training import ClassifierTraining, train_classifier

    train = patches_of(tumour_slides[0][0], 120, 0)
    validation = patches_of(tumour_slides[1][0], 50, 1)
    config = ClassifierTraining(
        input_size=64,
        width=16,
        epochs=4,
        mpp=1.0,
        patience=2,
        device="cpu",
        notes="test model, synthetic data",
    )
    path = tmp_path_factory.mktemp("classifier") / "tumour.safetensors"
    return path, train_classifier(train, validation, path, config)


@pytest.fixture(scope="session")
def dicom_series(pyramid_path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic pyramid as a multi-level DICOM WSI series folder (one file a level),
    written by wsidicomizer (a test-only dependency) through its tiffslide source."""
    from wsidicomizer import WsiDicomizer
    from wsidicomizer.sources.tiffslide.tiffslide_source import TiffSlideSource

    folder = tmp_path_factory.mktemp("dicom") / "series"
    WsiDicomizer.convert(
        pyramid_path,
        folder,
        preferred_source=TiffSlideSource,
        include_label=False,
        include_overview=False,
        include_thumbnail=False,
    )
    return folder


def tiny_classifier(
    path: Path, classes: tuple[str, ...] = ("benign", "idc"), threshold: float = 0.5
) -> Path:
    """An untrained width-4 small CNN for 50 px images, saved with its card (one sigmoid
    output for two classes, a softmax over more)."""
    from napari_mitosis.models.card import ModelCard, build_model
    from napari_mitosis.models.checkpoint import save_checkpoint

    outputs = 1 if len(classes) == 2 else len(classes)
    card = ModelCard("small_cnn", {"outputs": outputs, "width": 4}, task="classification",
                     input_size=50, mpp=None, classes=classes, threshold=threshold)  # fmt: skip
    return save_checkpoint(path, build_model(card), card)


def crop_classifier(path: Path, *, classes=("normal", "atypical"), threshold=0.5) -> Path:
    """An untrained small CNN as an atypical classifier: 0.25 µm/px, the central 32 px of
    its crops resized to its 24 px input (so the reading and resizing rules both matter)."""
    from napari_mitosis.models.card import ModelCard, build_model
    from napari_mitosis.models.checkpoint import save_checkpoint

    card = ModelCard("small_cnn", {"outputs": 1, "width": 4}, task="classification",
                     input_size=24, mpp=0.25, classes=tuple(classes), threshold=threshold,
                     centre_crop=32)  # fmt: skip
    return save_checkpoint(path, build_model(card), card)


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """How many of the docs' code blocks ran, and why the others did not."""
    from docs_examples import TALLY

    if not TALLY.ran and not TALLY.skipped:
        return
    terminalreporter.write_sep("-", "docs examples")
    terminalreporter.write_line(
        f"{len(TALLY.ran)} code blocks ran ({len(TALLY.shortened)} of them trainings "
        f"shortened), {len(TALLY.skipped)} skipped"
    )
    for where, why in TALLY.shortened:
        terminalreporter.write_line(f"  shortened {where}: {why}")
    for where, why in TALLY.skipped:
        terminalreporter.write_line(f"  skipped {where}: {why}")
