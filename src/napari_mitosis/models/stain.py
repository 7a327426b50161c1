"""H&E stain augmentation for training and stain normalisation for training and inference.

Models trained on one lab's slides meet other scanners and stains; the MIDOG challenges
found that what decides cross-scanner results is how training varies the stain.

- `hed_jitter` (Tellez et al. 2018, "Whole-slide mitosis detection in H&E breast
  histology using PHH3 as a reference", and their 2019 augmentation study): colour
  deconvolution into haematoxylin, eosin and DAB concentrations (Ruifrok & Johnston's
  stain vectors, scikit-image's `rgb_from_hed`; unclipped, so no perturbation is an exact
  round trip), each scaled by ``1 + U(-σ, σ)`` and shifted by ``U(-σ, σ)``, then back. Glass (optical density below
  `BACKGROUND_OD`) is left as it is, so blank tiles stay blank.
- `StainNormaliser`: Reinhard (LAB mean and spread) or Macenko (the two stain vectors and
  their 99th-percentile concentrations) of a reference image; the fitted numbers go into
  the model card, and prediction applies the same mapping to every tile.

Every function takes and returns uint8 RGB ``(..., H, W, 3)`` and never returns NaN: pixels
at 0 are clipped to 1 before logarithms, tiles without enough stained pixels are returned
unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from skimage.color import hed_from_rgb, lab2rgb, rgb2lab, rgb_from_hed

#: Total optical density (sum over RGB of −log10(I/255)) below which a pixel is glass.
BACKGROUND_OD = 0.15
#: Fewer stained pixels than this and a tile is left as it is (nothing to estimate from).
MIN_STAINED = 64
Method = Literal["reinhard", "macenko"]


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """−log10(I / 255) per channel, float64, with I clipped to ≥ 1 (no infinities)."""
    return -np.log10(np.maximum(np.asarray(rgb, np.float64), 1.0) / 255.0)


def tissue_pixels(rgb: np.ndarray) -> np.ndarray:
    """Boolean mask of pixels that hold stain (not glass)."""
    return optical_density(rgb).sum(axis=-1) > BACKGROUND_OD


def hed_jitter(
    rgb: np.ndarray,
    rng: np.random.Generator,
    sigma: float = 0.05,
    *,
    alpha: np.ndarray | None = None,
    beta: np.ndarray | None = None,
) -> np.ndarray:
    """One random HED perturbation of a uint8 RGB tile (``alpha``/``beta``: the 3 scale
    factors and shifts, drawn from ``sigma`` when not given)."""
    rgb = np.asarray(rgb)
    if sigma == 0 and alpha is None and beta is None:
        return rgb
    alpha = rng.uniform(1 - sigma, 1 + sigma, 3) if alpha is None else np.asarray(alpha)
    beta = rng.uniform(-sigma, sigma, 3) if beta is None else np.asarray(beta)
    concentrations = optical_density(rgb) @ hed_from_rgb
    od = (concentrations * alpha + beta) @ rgb_from_hed
    jittered = np.clip(np.rint(255 * 10.0 ** (-od)), 0, 255).astype(np.uint8)
    glass = ~tissue_pixels(rgb)
    jittered[glass] = rgb[glass]
    return jittered


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def macenko_stains(
    rgb: np.ndarray, *, angle_percentile: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(stain matrix rows H then E in OD space, their 99th-percentile concentrations) of a
    tile, by Macenko et al. 2009: the plane of the two largest OD eigenvectors, the extreme
    angles of the pixels in it."""
    od = optical_density(rgb).reshape(-1, 3)
    od = od[od.sum(axis=1) > BACKGROUND_OD]
    if len(od) < MIN_STAINED:
        raise ValueError(f"too few stained pixels ({len(od)}) to estimate stains from")
    _, vectors = np.linalg.eigh(np.cov(od.T))
    plane = vectors[:, [2, 1]]  # the two largest eigenvalues
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # both pointing into positive OD
    plane[:, 1] *= np.sign(plane[:, 1].sum()) or 1.0
    projected = od @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [angle_percentile, 100 - angle_percentile])
    first = plane @ np.array([np.cos(low), np.sin(low)])
    second = plane @ np.array([np.cos(high), np.sin(high)])
    # Haematoxylin absorbs red most: its vector has the larger red component.
    stains = _unit(np.stack([first, second] if first[0] > second[0] else [second, first]))
    concentrations = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
    return stains, np.percentile(concentrations, 99, axis=1)


@dataclass
class StainNormaliser:
    """Maps tiles onto a reference image's stain (fit once, apply to every tile)."""

    method: Method
    target: dict[str, list[Any]] = field(default_factory=dict)

    @classmethod
    def fit(cls, reference: np.ndarray, method: Method = "macenko") -> StainNormaliser:
        reference = np.asarray(reference)
        if method == "reinhard":
            lab = rgb2lab(reference)[tissue_pixels(reference)]
            if len(lab) < MIN_STAINED:
                raise ValueError("the reference image holds too little stained tissue")
            return cls(method, {"mean": lab.mean(0).tolist(), "std": lab.std(0).tolist()})
        if method == "macenko":
            stains, maxima = macenko_stains(reference)
            return cls(method, {"stains": stains.tolist(), "max_concentrations": maxima.tolist()})
        raise ValueError(f"stain normalisation is 'reinhard' or 'macenko', not {method!r}")

    def as_dict(self) -> dict[str, Any]:
        """For the model card."""
        return {"method": self.method, **self.target}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> StainNormaliser:
        record = dict(record)
        return cls(record.pop("method"), record)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The tile (or a batch of tiles, leading axes) in the reference's stain; glass
        stays glass, and a tile with too little stain is returned as it is."""
        rgb = np.asarray(rgb)
        if rgb.ndim > 3:
            return np.stack([self(tile) for tile in rgb])
        stained = tissue_pixels(rgb)
        if stained.sum() < MIN_STAINED:
            return rgb
        if self.method == "reinhard":
            lab = rgb2lab(rgb)
            mean, std = lab[stained].mean(0), lab[stained].std(0)
            target_mean, target_std = (
                np.asarray(self.target["mean"]),
                np.asarray(self.target["std"]),
            )
            lab = (lab - mean) / np.maximum(std, 1e-6) * target_std + target_mean
            out = lab2rgb(lab)
        else:
            try:
                stains, maxima = macenko_stains(rgb)
            except (ValueError, np.linalg.LinAlgError):
                return rgb
            od = optical_density(rgb).reshape(-1, 3)
            concentrations = np.linalg.lstsq(stains.T, od.T, rcond=None)[0]
            target_max = np.asarray(self.target["max_concentrations"])
            concentrations *= (target_max / np.maximum(maxima, 1e-6))[:, None]
            od = (np.asarray(self.target["stains"]).T @ concentrations).T.reshape(rgb.shape)
            out = 10.0 ** (-od)
        normalised = np.clip(np.rint(out * 255), 0, 255).astype(np.uint8)
        normalised[~stained] = rgb[~stained]
        return normalised


def fit_reference(method: str | None, reference: str | Path | None) -> dict[str, Any] | None:
    """The model card's ``stain`` record for normalising to ``reference`` (an image file),
    or None when ``method`` is None or "none"."""
    if method in (None, "none"):
        return None
    if reference is None:
        raise ValueError(f"{method} stain normalisation needs a reference image")
    from PIL import Image

    with Image.open(reference) as image:
        pixels = np.asarray(image.convert("RGB"))
    try:
        return StainNormaliser.fit(pixels, method).as_dict()  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"{reference}: {err}") from None


def card_normaliser(card: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """What a predictor applies to uint8 (N, H, W, C) tiles for ``card``: its stain
    normalisation on each RGB group of channels (patch and context), or None."""
    if not getattr(card, "stain", None):
        return None
    normalise = StainNormaliser.from_dict(card.stain)

    def apply(tiles: np.ndarray) -> np.ndarray:
        if tiles.ndim != 4 or tiles.shape[-1] % 3:
            return tiles  # grey images: no stains to normalise
        groups = [normalise(tiles[..., c : c + 3]) for c in range(0, tiles.shape[-1], 3)]
        return np.concatenate(groups, axis=-1)

    return apply


@dataclass
class StainTraining:
    """What every trainer's configuration holds about stain: HED jitter (σ, 0 off; on by
    default for RGB) and an optional normalisation to a reference image, which the model
    card records so that prediction does the same."""

    hed_jitter: float = 0.05
    stain_normalisation: str | None = None  # "reinhard", "macenko" or None
    stain_reference: str | None = None  # an image file of the stain to normalise to

    def stain_record(self) -> dict[str, Any] | None:
        """The card's ``stain`` field for this configuration."""
        return fit_reference(self.stain_normalisation, self.stain_reference)

    def stain_rng(self, seed: int) -> np.random.Generator:
        """The jitter's own random stream, so that turning it on or off leaves a
        training's other draws (crops, order) as they were."""
        return np.random.default_rng([seed, 1])

    def jitter(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``rgb`` (H, W, C) with one HED perturbation shared by every RGB group of
        channels (a patch and its context); grey images are returned as they are."""
        if self.hed_jitter <= 0 or rgb.shape[-1] % 3:
            return rgb
        alpha = rng.uniform(1 - self.hed_jitter, 1 + self.hed_jitter, 3)
        beta = rng.uniform(-self.hed_jitter, self.hed_jitter, 3)
        groups = [
            hed_jitter(rgb[..., c : c + 3], rng, alpha=alpha, beta=beta)
            for c in range(0, rgb.shape[-1], 3)
        ]
        return np.concatenate(groups, axis=-1)
