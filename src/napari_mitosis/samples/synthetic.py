"""Synthetic H&E-like slides with a known answer: tissue, a tumour region and mitoses.

No real slide may ship with the package, yet every widget needs something to run on and
every test needs ground truth. The generator paints eosin-pink stroma with purple nuclei,
a denser tumour region with larger darker nuclei, and dark clumped "mitotic figures" at
recorded positions; it is deterministic for a given seed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_mitosis.io.output_file import atomic_output
from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff

GLASS = np.array([243, 241, 246], np.float32)
STROMA = np.array([232, 160, 200], np.float32)
TUMOUR_STROMA = np.array([205, 140, 200], np.float32)
NUCLEUS = np.array([110, 70, 160], np.float32)
TUMOUR_NUCLEUS = np.array([80, 45, 140], np.float32)
MITOSIS = np.array([35, 15, 55], np.float32)
DISTRACTOR = np.array([95, 60, 150], np.float32)


@dataclass(frozen=True)
class SyntheticTruth:
    """Ground truth of a synthetic slide, in level-0 pixels (y, x)."""

    mpp: float
    mitoses: np.ndarray  # (n, 2) centres of mitotic figures
    mitosis_radius_px: float
    tissue_mask: np.ndarray  # bool, same (y, x) as the slide
    tumour_mask: np.ndarray  # bool, same (y, x) as the slide
    mitosis_mask: np.ndarray | None = None  # bool: the painted chromatin of each figure
    distractors: np.ndarray | None = None  # (m, 2) centres of dark look-alike nuclei


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, bilinearly enlarged."""
    gy, gx = shape[0] // cell + 2, shape[1] // cell + 2
    grid = rng.uniform(-1, 1, (gy, gx)).astype(np.float32)
    ys = np.arange(shape[0], dtype=np.float32) / cell
    xs = np.arange(shape[1], dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _paint_disc(
    image: np.ndarray,
    cy: float,
    cx: float,
    radius: float,
    colour: np.ndarray,
    strength: float = 1.0,
    mask: np.ndarray | None = None,
) -> None:
    """Blend a soft-edged disc of ``colour`` into ``image`` (float32, in place); mark the
    disc's core in ``mask`` when given."""
    h, w = image.shape[:2]
    y0, y1 = max(int(cy - radius - 2), 0), min(int(cy + radius + 3), h)
    x0, x1 = max(int(cx - radius - 2), 0), min(int(cx + radius + 3), w)
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.ogrid[y0:y1, x0:x1]
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    alpha = (np.clip(radius + 1.0 - dist, 0.0, 1.0) * strength)[..., None]
    window = image[y0:y1, x0:x1]
    window[...] = window * (1 - alpha) + colour * alpha
    if mask is not None:
        mask[y0:y1, x0:x1] |= dist <= radius


def synthetic_slide(
    height: int = 4096,
    width: int = 6144,
    *,
    mpp: float = 0.25,
    n_mitoses: int = 12,
    seed: int = 0,
    field: bool = False,
    n_distractors: int = 0,
) -> tuple[np.ndarray, SyntheticTruth]:
    """An RGB uint8 H&E-like image and its ground truth.

    Sizes are in µm-aware pixels: nuclei are ~6–9 µm across, mitotic figures ~10 µm,
    whatever ``mpp`` is, so the same models see the same biology at the same µm/px.
    ``field=True`` makes a high-power field: tumour from edge to edge, as in MITOS images.
    ``n_distractors`` adds dark, smooth, round nuclei that are *not* mitoses.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.ogrid[0:height, 0:width]
    tissue = np.zeros((height, width), bool)
    for cy, cx, ry, rx in ((0.5, 0.35, 0.38, 0.28), (0.45, 0.68, 0.34, 0.24), (0.7, 0.5, 0.2, 0.3)):
        tissue |= _ellipse(yy, xx, cy * height, cx * width, ry * height, rx * width)
    tumour = _ellipse(yy, xx, 0.5 * height, 0.42 * width, 0.22 * height, 0.16 * width) & tissue
    if field:
        tissue = np.ones((height, width), bool)
        tumour = tissue.copy()

    shade = _smooth_noise(rng, (height, width), cell=max(int(60 / mpp), 8))[..., None]
    image = np.empty((height, width, 3), np.float32)
    image[...] = GLASS
    stroma = STROMA + 12.0 * shade
    image[tissue] = stroma[tissue]
    image[tumour] = (TUMOUR_STROMA + 12.0 * shade)[tumour]

    um = 1.0 / mpp  # pixels per µm
    # Nuclei: a jittered lattice, kept where there is tissue; tumour is denser and coarser.
    for region, spacing, radius, colour in (
        (tissue & ~tumour, 16.0, 3.2, NUCLEUS),
        (tumour, 11.0, 4.5, TUMOUR_NUCLEUS),
    ):
        step = spacing * um
        cys, cxs = np.meshgrid(np.arange(step / 2, height, step), np.arange(step / 2, width, step))
        cys = cys.ravel() + rng.uniform(-0.35, 0.35, cys.size) * step
        cxs = cxs.ravel() + rng.uniform(-0.35, 0.35, cxs.size) * step
        for cy, cx in zip(cys, cxs, strict=True):
            iy, ix = int(np.clip(cy, 0, height - 1)), int(np.clip(cx, 0, width - 1))
            if region[iy, ix]:
                r = radius * um * rng.uniform(0.8, 1.25)
                _paint_disc(image, cy, cx, r, colour, strength=rng.uniform(0.7, 0.95))

    # Mitoses: dark clumped chromatin (a few overlapping blobs), mostly in the tumour.
    figure_radius = 5.0 * um
    candidates = np.argwhere(tumour[:: int(4 * um), :: int(4 * um)]) * int(4 * um)
    margin = (1.5 if field else 3) * figure_radius
    inside = (candidates[:, 0] > margin) & (candidates[:, 0] < height - margin)
    inside &= (candidates[:, 1] > margin) & (candidates[:, 1] < width - margin)
    candidates = candidates[inside]
    mitoses: list[tuple[float, float]] = []
    for index in rng.permutation(len(candidates)):
        cy, cx = candidates[index].astype(float)
        if all(np.hypot(cy - my, cx - mx) > 5 * figure_radius for my, mx in mitoses):
            mitoses.append((cy, cx))
        if len(mitoses) == n_mitoses:
            break
    mitosis_mask = np.zeros((height, width), bool)
    for cy, cx in mitoses:
        _paint_disc(image, cy, cx, figure_radius * 1.25, TUMOUR_STROMA, strength=1.0)
        for _ in range(5):
            oy, ox = rng.normal(0, figure_radius * 0.35, 2)
            radius = figure_radius * rng.uniform(0.45, 0.7)
            _paint_disc(image, cy + oy, cx + ox, radius, MITOSIS, mask=mitosis_mask)

    # Look-alikes: large, dark but smooth and paler nuclei, away from every mitosis.
    distractors: list[tuple[float, float]] = []
    for index in rng.permutation(len(candidates)) if n_distractors else []:
        if len(distractors) == n_distractors:
            break
        cy, cx = candidates[index].astype(float)
        taken = mitoses + distractors
        if all(np.hypot(cy - my, cx - mx) > 5 * figure_radius for my, mx in taken):
            distractors.append((cy, cx))
            _paint_disc(image, cy, cx, figure_radius * 0.95, DISTRACTOR)

    image += rng.normal(0, 4.0, image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    truth = SyntheticTruth(
        mpp=mpp,
        mitoses=np.array(mitoses, float).reshape(-1, 2),
        mitosis_radius_px=figure_radius,
        tissue_mask=tissue,
        tumour_mask=tumour,
        mitosis_mask=mitosis_mask,
        distractors=np.array(distractors, float).reshape(-1, 2),
    )
    return rgb, truth


def synthetic_fields(
    count: int, *, size: int = 384, n_mitoses: int = 3, n_distractors: int = 3, first_seed: int = 0
) -> list[tuple[np.ndarray, SyntheticTruth]]:
    """``count`` high-power fields (mitoses plus look-alikes), seeds ``first_seed`` upward."""
    return [
        synthetic_slide(
            size,
            size,
            field=True,
            n_mitoses=n_mitoses,
            n_distractors=n_distractors,
            seed=first_seed + i,
        )
        for i in range(count)
    ]


def write_synthetic_slide(
    path: str | Path,
    height: int = 4096,
    width: int = 6144,
    *,
    mpp: float = 0.25,
    n_mitoses: int = 12,
    seed: int = 0,
    overwrite: bool = False,
) -> SyntheticTruth:
    """Write a synthetic slide as a JPEG-tiled pyramid OpenSlide opens; return its truth."""
    rgb, truth = synthetic_slide(height, width, mpp=mpp, n_mitoses=n_mitoses, seed=seed)
    write_pyramid_tiff(
        path,
        rgb,
        mpp=(mpp, mpp),
        compression="jpeg",
        overwrite=overwrite,
        extra={"synthetic": True, "seed": seed},
    )
    return truth


@dataclass(frozen=True)
class SampleSlide:
    """A synthetic slide on disk and where its mitoses are (level-0 pixels, (y, x))."""

    path: Path
    mpp: float
    mitoses: np.ndarray
    mitosis_radius_px: float


def ensure_sample_slide(
    folder: str | Path, *, height: int = 4096, width: int = 6144, seed: int = 0
) -> SampleSlide:
    """Write the sample slide into ``folder`` unless an identical one is already there.

    A JSON sidecar keeps the truth, so reopening costs no regeneration; both files are
    written atomically, so an interrupted run never leaves a half-written sample.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"synthetic-he-{width}x{height}-seed{seed}"
    tiff, sidecar = folder / f"{stem}.tif", folder / f"{stem}.json"
    if not (tiff.exists() and sidecar.exists()):
        truth = write_synthetic_slide(tiff, height, width, seed=seed, overwrite=True)
        record = {
            "mpp": truth.mpp,
            "mitoses_yx": truth.mitoses.tolist(),
            "mitosis_radius_px": truth.mitosis_radius_px,
        }
        with atomic_output(sidecar, overwrite=True) as tmp:
            tmp.write_text(json.dumps(record))
    record = json.loads(sidecar.read_text())
    return SampleSlide(
        path=tiff,
        mpp=float(record["mpp"]),
        mitoses=np.array(record["mitoses_yx"], float).reshape(-1, 2),
        mitosis_radius_px=float(record["mitosis_radius_px"]),
    )
