"""Every model reads at its own µm/px: a slide with no level near it is resampled, and the
same tissue scanned at another resolution gives the same figures, masks and heatmaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_mitosis.io.resampled import ResampledLevel, model_scale, resampling_note


def _rescaled(rgb: np.ndarray, factor: float) -> np.ndarray:
    """The same tissue scanned ``factor`` × coarser (factor < 1: finer)."""
    height, width = rgb.shape[:2]
    size = (round(width / factor), round(height / factor))
    method = Image.Resampling.BOX if factor > 1 else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize(size, method))


def _centres_um(centres_yx: np.ndarray, mpp: float) -> np.ndarray:
    return np.asarray(centres_yx, float).reshape(-1, 2) * mpp


def _matched(a_um: np.ndarray, b_um: np.ndarray, radius_um: float = 4.0) -> float:
    """Share of ``a`` with a point of ``b`` within ``radius_um``."""
    if len(a_um) == 0:
        return 1.0 if len(b_um) == 0 else 0.0
    if len(b_um) == 0:
        return 0.0
    distances = np.linalg.norm(a_um[:, None] - b_um[None], axis=-1)
    return float((distances.min(axis=1) <= radius_um).mean())


def test_tiles_of_a_resampled_level_are_the_whole_level_resized() -> None:
    rng = np.random.default_rng(0)
    level = rng.integers(0, 255, (300, 500, 3), dtype=np.uint8)
    for factor, method in ((2.0, Image.Resampling.BOX), (0.5, Image.Resampling.BICUBIC)):
        resampled = ResampledLevel(level, factor)
        size = (round(500 / factor), round(300 / factor))
        whole = np.asarray(Image.fromarray(level).resize(size, method))
        assert resampled.shape == (*whole.shape[:2], 3)
        for y, x in ((0, 0), (37, 91), (whole.shape[0] - 20, whole.shape[1] - 30)):
            tile = resampled[y : y + 64, x : x + 64]
            np.testing.assert_array_equal(tile, whole[y : y + 64, x : x + 64])


def test_the_level_read_as_it_is_only_within_the_cards_tolerance() -> None:
    assert model_scale([0.25, 0.5, 1.0, 2.0], 0.5) == (1, 1.0)  # a level matches
    assert model_scale([0.26, 0.52], 0.25) == (0, 1.0)  # within 10 %
    level, factor = model_scale([0.499], 0.25)  # a 20× slide, a 40× model: upsampled
    assert level == 0 and factor == pytest.approx(0.501, abs=1e-3)
    assert model_scale([0.25, 1.0], 0.5) == (0, 2.0)  # from the finer level, downsampled
    assert model_scale([0.27], 0.25, tolerance=0.1) == (0, 1.0)
    assert model_scale([0.23, 0.46], 0.3, tolerance=0.05)[0] == 0
    assert "less detail" in resampling_note(0.5, 0.25)
    assert resampling_note(1.0, 0.25) == ""


def test_a_20x_slide_is_read_at_a_40x_models_scale(cmu_small: Path) -> None:
    from napari_mitosis.io.formats import open_slide

    with open_slide(cmu_small) as slide:
        where = slide.model_level(0.25, region=(0, 0, 1000, 1000))
    assert where["resampled"] == pytest.approx(0.25 / 0.499)
    assert where["level_mpp"][1] == pytest.approx(0.25)
    assert where["source"].shape[:2] == (
        round(2967 / where["resampled"]),
        round(2220 / where["resampled"]),
    )
    # 1,000 level-0 px = 499 µm = 1,996 model px (outward rounding may add one)
    assert where["region"][:2] == (0, 0) and 1996 <= where["region"][2] <= 1997


@pytest.fixture(scope="module")
def field_at_two_scales(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic field written at 0.25 µm/px and the same tissue at 0.5 µm/px, as plain
    single-level images (no level near a 0.25 µm/px model in the second)."""
    from napari_mitosis.samples.synthetic import synthetic_slide

    rgb, truth = synthetic_slide(768, 768, mpp=0.25, n_mitoses=6, seed=11)
    folder = tmp_path_factory.mktemp("scales")
    fine, coarse = folder / "fine.png", folder / "coarse.png"
    Image.fromarray(rgb).save(fine)
    Image.fromarray(_rescaled(rgb, 2.0)).save(coarse)
    return fine, coarse, truth


def test_a_detector_finds_the_same_figures_at_both_scales_in_boxes_of_its_size(
    field_at_two_scales, trained_detector
) -> None:
    from napari_mitosis.detection.run import detect_slide

    fine, coarse, truth = field_at_two_scales
    at_fine = detect_slide(fine, trained_detector[0], mpp=0.25, device="cpu")
    at_coarse = detect_slide(coarse, trained_detector[0], mpp=0.5, device="cpu")
    assert at_fine.resampled == 1.0 and at_coarse.resampled == pytest.approx(0.5)
    assert "upsampled 2" in at_coarse.note and "upsampled" in at_coarse.summary()
    fine_um = _centres_um(at_fine.detections.centres, 0.25)
    coarse_um = _centres_um(at_coarse.detections.centres, 0.5)
    truth_um = _centres_um(truth.mitoses, 0.25)
    assert _matched(truth_um, fine_um) >= 0.8
    assert _matched(truth_um, coarse_um) >= 0.8
    assert _matched(coarse_um, fine_um) >= 0.8 and _matched(fine_um, coarse_um) >= 0.8
    width_fine = np.median(np.diff(at_fine.detections.boxes[:, [0, 2]], axis=1)) * 0.25
    width_coarse = np.median(np.diff(at_coarse.detections.boxes[:, [0, 2]], axis=1)) * 0.5
    # µm, not pixels: without resampling the coarse boxes would be twice as wide
    assert width_coarse == pytest.approx(width_fine, rel=0.3)


def test_a_unet_segments_the_same_figures_at_both_scales(field_at_two_scales, trained_unet) -> None:
    from napari_mitosis.segmentation.run import segment_slide

    fine, coarse, truth = field_at_two_scales
    at_fine = segment_slide(fine, trained_unet[0], mpp=0.25, device="cpu")
    at_coarse = segment_slide(coarse, trained_unet[0], mpp=0.5, device="cpu")
    assert at_coarse.resampled == pytest.approx(0.5) and at_coarse.note
    fine_um = _centres_um(at_fine.detections.centres, 0.25)
    coarse_um = _centres_um(at_coarse.detections.centres, 0.5)
    truth_um = _centres_um(truth.mitoses, 0.25)
    assert _matched(truth_um, fine_um) >= 0.8 and _matched(truth_um, coarse_um) >= 0.8
    # the figures' areas in µm² agree: the mask was drawn at the model's scale
    area_fine = (np.asarray(at_fine.labels) > 0).sum() * 0.25**2
    area_coarse = (np.asarray(at_coarse.labels) > 0).sum() * at_coarse.level_mpp[1] ** 2
    assert area_coarse == pytest.approx(area_fine, rel=0.35)


def test_a_classifier_gives_the_same_heatmap_at_both_scales(
    tumour_slides, trained_classifier, tmp_path: Path
) -> None:
    from napari_mitosis.classification.run import classify_slide
    from napari_mitosis.io.formats import open_slide

    with open_slide(tumour_slides[2][0]) as slide:  # 1 µm/px, the model's own
        rgb = np.asarray(slide.levels[0])
    native, fine = tmp_path / "native.png", tmp_path / "fine.png"
    Image.fromarray(rgb).save(native)
    Image.fromarray(_rescaled(rgb, 0.5)).save(fine)  # 0.5 µm/px: read downsampled 2×
    at_native = classify_slide(native, trained_classifier[0], mpp=1.0, device="cpu")
    at_fine = classify_slide(fine, trained_classifier[0], mpp=0.5, device="cpu")
    assert at_native.resampled == 1.0 and at_fine.resampled == pytest.approx(2.0)
    assert at_fine.heatmap.shape == at_native.heatmap.shape
    assert at_fine.cell_level0 * 0.5 == pytest.approx(at_native.cell_level0 * 1.0)  # µm
    both = at_native.visited & at_fine.visited
    assert both.sum() > 0.8 * at_native.visited.sum()
    difference = np.abs(np.asarray(at_fine.heatmap) - np.asarray(at_native.heatmap))[both]
    assert np.mean(difference) < 0.05
    assert (at_fine.mask[both] == at_native.mask[both]).mean() > 0.9
