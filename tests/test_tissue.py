"""Given a slide, tissue detection finds the stained tissue and tiles on glass are skipped."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_mitosis import open_slide, synthetic_slide
from napari_mitosis.engine.tiled_inference import TilePredictor
from napari_mitosis.engine.tiling import TileGrid
from napari_mitosis.engine.tissue import CROSS, TissueMask, hsv_saturation, tissue_mask
from napari_mitosis.models.checkpoint import ModelCard
from napari_mitosis.models.unet import unet
from napari_mitosis.segmentation.run import SegmentationRun


def test_tissue_mask_matches_the_synthetic_truth() -> None:
    rgb, truth = synthetic_slide(1024, 1536, seed=3)
    mask = tissue_mask([rgb, rgb[::4, ::4]], max_size=512, level0_mpp=0.25)
    assert mask.downsample == (4.0, 4.0)
    small_truth = truth.tissue_mask[::4, ::4]
    dice = 2 * (mask.mask & small_truth).sum() / (mask.mask.sum() + small_truth.sum())
    assert dice > 0.95


def test_saturation_is_scikit_images_hsv_saturation() -> None:
    from skimage.color import rgb2hsv

    rgb = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    rgb[0, :3] = 0  # black: saturation 0, no division by zero
    rgb[1, :3] = 200  # grey
    np.testing.assert_allclose(hsv_saturation(rgb), rgb2hsv(rgb)[..., 1], atol=1e-12)


@pytest.mark.parametrize(
    ("downsample", "shape", "tile", "overlap"),
    [((7.3, 7.9), (10950, 8030), 96, 0), ((1.0, 1.0), (1500, 1100), 64, 14)],
)
def test_tile_fractions_are_the_mean_of_the_mask_under_each_tile(
    downsample, shape, tile, overlap
) -> None:
    mask = np.random.default_rng(1).random((1500, 1100)) > 0.4
    tissue = TissueMask(mask, downsample)
    grid = TileGrid.over((*shape, 3), tile, overlap)
    scale_y, scale_x = 1 / downsample[0], 1 / downsample[1]  # mask px per level-0 px
    expected = []
    for y, x in grid.origins():  # the definition, window by window (edge tiles clipped)
        y0, x0 = int(y * scale_y), int(x * scale_x)
        y1 = max(math.ceil((y + tile) * scale_y), y0 + 1)
        x1 = max(math.ceil((x + tile) * scale_x), x0 + 1)
        window = mask[y0:y1, x0:x1]
        expected.append(window.mean() if window.size else 0.0)
    assert len(expected) > 600
    np.testing.assert_allclose(tissue.tile_fractions(grid), expected, atol=1e-12)


def test_closing_by_two_crosses_is_closing_by_a_radius_2_disk() -> None:
    from scipy.ndimage import binary_closing
    from skimage.morphology import disk

    mask = np.random.default_rng(2).random((300, 200)) > 0.7
    np.testing.assert_array_equal(
        binary_closing(mask, CROSS, iterations=2, border_value=0),
        binary_closing(mask, disk(2), border_value=0),
    )


def test_real_slide_tissue_fraction_is_sensible(cmu_small) -> None:
    slide = open_slide(cmu_small)
    mask = tissue_mask(slide.sources, level0_mpp=slide.mpp[1])
    # CMU-1-Small-Region: a strip of skin on white glass, about a third of the field.
    assert 0.25 < mask.fraction < 0.5
    assert mask.mask.shape == (1483, 1110)  # computed on the ×2 level, never level 0


def test_tile_fractions_and_uniform_images() -> None:
    rgb = np.full((512, 512, 3), 245, np.uint8)
    rgb[:, :256] = (200, 120, 180)  # left half stained
    mask = tissue_mask([rgb], min_object_um2=10, min_hole_um2=10)
    grid = TileGrid.over(rgb.shape, 256, 0)
    np.testing.assert_allclose(mask.tile_fractions(grid), [1, 0, 1, 0], atol=0.02)
    with pytest.raises(ValueError, match="uniform"):
        tissue_mask([np.full((64, 64, 3), 245, np.uint8)])


def test_segmentation_sends_only_tissue_tiles_to_the_model() -> None:
    rgb, truth = synthetic_slide(1024, 1536, seed=3)
    card = ModelCard("unet", {"base_width": 4, "depth": 2}, input_size=128)
    predictor = TilePredictor(unet(base_width=4, depth=2), card, "cpu")
    seen: list[np.ndarray] = []

    def spy(tiles: np.ndarray) -> np.ndarray:
        seen.extend(tiles)
        return predictor(tiles)

    run = SegmentationRun(rgb, predictor, tile=128, overlap=0)
    run.predictor = spy  # the engine only calls it
    kept = run.restrict_to_tissue(tissue_mask([rgb], level0_mpp=0.25), min_fraction=0.3)
    assert 0 < kept < len(run.grid)
    list(run.steps())
    assert len(seen) == kept
    glass = rgb[~truth.tissue_mask].mean(axis=0)
    for tile in seen:  # no tile sent is pure glass
        assert np.abs(tile.reshape(-1, 3).mean(axis=0) - glass).max() > 5
