"""Given H&E tiles, stain jitter and normalisation do what their papers say, leave glass
and blank tiles alone, never give NaN, and travel with the model card to prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.color import rgb2lab, rgb_from_hed

from napari_mitosis.models.stain import (
    StainNormaliser,
    StainTraining,
    card_normaliser,
    fit_reference,
    hed_jitter,
    macenko_stains,
)
from napari_mitosis.samples.synthetic import synthetic_slide

H, E = rgb_from_hed[0], rgb_from_hed[1]  # Ruifrok & Johnston's optical densities per unit


def _from_stains(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    """uint8 RGB of pixels holding concentrations h of haematoxylin and e of eosin."""
    od = h[..., None] * H + e[..., None] * E
    return np.clip(np.rint(255 * 10.0 ** (-od)), 0, 255).astype(np.uint8)


def test_hed_jitter_scales_and_shifts_each_stain_as_tellez_describes() -> None:
    rng = np.random.default_rng(0)
    h = np.full((8, 8), 0.6)
    tile = _from_stains(h, np.zeros((8, 8)))  # haematoxylin only
    # No perturbation is the identity (up to 8-bit rounding).
    same = hed_jitter(tile, rng, alpha=np.ones(3), beta=np.zeros(3))
    assert np.abs(same.astype(int) - tile).max() <= 1
    # Haematoxylin × 1.5: the pixel's optical density is 1.5 × 0.6 × H, worked out by hand.
    darker = hed_jitter(tile, rng, alpha=np.array([1.5, 1, 1]), beta=np.zeros(3))
    expected = np.rint(255 * 10.0 ** (-(0.9 * H))).astype(int)
    assert np.abs(darker[0, 0].astype(int) - expected).max() <= 2
    # A shift of 0.1 eosin adds 0.1 × E of optical density to every tissue pixel.
    pinker = hed_jitter(tile, rng, alpha=np.ones(3), beta=np.array([0, 0.1, 0]))
    expected = np.rint(255 * 10.0 ** (-(0.6 * H + 0.1 * E))).astype(int)
    assert np.abs(pinker[0, 0].astype(int) - expected).max() <= 2


def test_jitter_leaves_glass_and_blank_tiles_and_gives_no_nan() -> None:
    rng = np.random.default_rng(1)
    white = np.full((32, 32, 3), 255, np.uint8)
    assert (hed_jitter(white, rng, 0.3) == 255).all()  # glass stays glass
    half = _from_stains(
        np.where(np.arange(32) < 16, 0.8, 0.0)[None].repeat(32, 0), np.zeros((32, 32))
    )
    out = hed_jitter(half, rng, 0.3)
    np.testing.assert_array_equal(out[:, 16:], half[:, 16:])  # the glass half untouched
    assert not np.array_equal(out[:, :16], half[:, :16])  # the stained half jittered
    for tile in (np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 1, np.uint8)):
        result = hed_jitter(tile, rng, 0.3)  # saturated, nearly black: a log of 0 nowhere
        assert result.dtype == np.uint8 and result.shape == tile.shape


def test_training_jitter_shares_one_perturbation_between_patch_and_context() -> None:
    config = StainTraining(hed_jitter=0.2)
    rgb, _ = synthetic_slide(64, 64, seed=2)
    stacked = np.concatenate([rgb, rgb], axis=-1)  # patch + context, as two-tower trains
    out = config.jitter(stacked, config.stain_rng(0))
    np.testing.assert_array_equal(out[..., :3], out[..., 3:])
    assert not np.array_equal(out[..., :3], rgb)
    grey = rgb[..., 0:1]
    assert config.jitter(grey, config.stain_rng(0)) is grey  # no stains to jitter in grey
    assert StainTraining(hed_jitter=0).jitter(rgb, config.stain_rng(0)) is rgb


def test_macenko_finds_the_two_stain_vectors_an_image_was_made_of() -> None:
    rng = np.random.default_rng(3)
    h, e = rng.uniform(0, 1.2, (64, 64)), rng.uniform(0, 0.8, (64, 64))
    stains, maxima = macenko_stains(_from_stains(h, e))
    truth = np.stack([H, E]) / np.linalg.norm(np.stack([H, E]), axis=1, keepdims=True)
    assert (np.sum(stains * truth, axis=1) > 0.99).all()  # cosines: the same directions
    assert maxima[0] > maxima[1] > 0  # more haematoxylin was laid down than eosin


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_normalisation_brings_a_restained_tile_back_to_the_reference(method: str) -> None:
    reference, _ = synthetic_slide(256, 256, seed=4)
    normalise = StainNormaliser.fit(reference, method)
    restained = hed_jitter(
        reference, np.random.default_rng(5), alpha=[1.3, 0.7, 1], beta=[0.05, -0.05, 0]
    )
    before = np.abs(restained.astype(int) - reference).mean()
    after = np.abs(normalise(restained).astype(int) - normalise(reference)).mean()
    assert after < before / 2, (before, after)
    if method == "reinhard":  # LAB mean and spread of the tissue match the reference's
        tissue = normalise(restained).sum(-1) < 700
        lab, target = rgb2lab(normalise(restained))[tissue], np.asarray(normalise.target["mean"])
        np.testing.assert_allclose(lab.mean(0), target, atol=2.0)
    blank = np.full((64, 64, 3), 250, np.uint8)
    np.testing.assert_array_equal(normalise(blank), blank)  # too little stain: left as is
    again = StainNormaliser.from_dict(normalise.as_dict())
    np.testing.assert_array_equal(again(restained), normalise(restained))


def test_the_card_carries_the_normalisation_to_prediction(tmp_path: Path) -> None:
    import torch

    from napari_mitosis.classification.run import ClassifierPredictor
    from napari_mitosis.models.checkpoint import (
        ModelCard,
        build_model,
        load_checkpoint,
        save_checkpoint,
    )

    reference, _ = synthetic_slide(256, 256, seed=6)
    Image.fromarray(reference).save(tmp_path / "reference.png")
    record = fit_reference("reinhard", tmp_path / "reference.png")
    card = ModelCard(
        "small_cnn", {"outputs": 1, "width": 4}, task="classification", input_size=64, stain=record
    )
    path = save_checkpoint(tmp_path / "m.safetensors", build_model(card), card)
    model, loaded = load_checkpoint(path, task="classification")
    assert loaded.stain == record and loaded.stain["method"] == "reinhard"
    tiles = np.stack([synthetic_slide(64, 64, seed=s)[0] for s in (7, 8)])
    with_stain = ClassifierPredictor(model, loaded, "cpu")
    plain = ClassifierPredictor(model, ModelCard(**{**loaded.__dict__, "stain": None}), "cpu")
    expected = plain.prepare(card_normaliser(loaded)(tiles))
    torch.testing.assert_close(with_stain.prepare(tiles), expected)
    # A reference without tissue cannot be fitted, and the error names it.
    Image.fromarray(np.full((64, 64, 3), 255, np.uint8)).save(tmp_path / "glass.png")
    with pytest.raises(ValueError, match=r"glass\.png: "):
        fit_reference("macenko", tmp_path / "glass.png")


def test_a_classifier_trained_with_normalisation_records_it(tmp_path: Path) -> None:
    from napari_mitosis.classification.training import ClassifierTraining, train_classifier
    from napari_mitosis.models.checkpoint import read_card

    reference, _ = synthetic_slide(128, 128, seed=9)
    Image.fromarray(reference).save(tmp_path / "reference.png")
    rng = np.random.default_rng(0)
    images = np.stack([synthetic_slide(48, 48, seed=int(s))[0] for s in rng.integers(0, 99, 16)])
    labels = np.arange(16) % 2
    config = ClassifierTraining(
        input_size=48,
        width=4,
        epochs=1,
        batch_size=8,
        device="cpu",
        stain_normalisation="macenko",
        stain_reference=str(tmp_path / "reference.png"),
    )
    train_classifier((images, labels), (images, labels), tmp_path / "c.safetensors", config)
    card = read_card(tmp_path / "c.safetensors")
    assert card.stain["method"] == "macenko" and len(card.stain["stains"]) == 2
