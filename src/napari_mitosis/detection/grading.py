"""The mitotic score of the Nottingham grade (Elston–Ellis) from a count in the 10-HPF
hotspot, for the field diameter of the microscope the grade is meant for.

Mitotic counts per 10 HPF depend on the field's area, so the score's cut-offs do too. The
table is the one by field diameter in the College of American Pathologists' protocol for
invasive breast carcinoma and the UK RCPath/NHSBSP breast reporting guidelines (after
Elston & Ellis, Histopathology 1991; 19: 403–410): for each diameter, the highest count
scoring 1 and the highest scoring 2. A digital slide has no eyepiece, so the user names
the field (diameter in mm, or an HPF area in mm²); the hotspot is then 10 fields of that
area, and its count is scored on that row.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter

from napari_mitosis.engine.tissue import TissueMask

#: Hotspot windows are searched on a grid of about this many cells a side per window
#: (≈ 50 µm cells for 10 fields of 0.55 mm): fine enough to place a 1.5 mm window, coarse
#: enough that a review recomputes it per keypress in milliseconds.
CELLS_PER_WINDOW = 32

#: field diameter (mm) → (highest count scoring 1, highest scoring 2) per 10 HPF.
FIELD_DIAMETER_TABLE: dict[float, tuple[int, int]] = {
    0.40: (4, 9),
    0.41: (4, 9),
    0.42: (5, 10),
    0.43: (5, 10),
    0.44: (5, 11),
    0.45: (5, 11),
    0.46: (6, 12),
    0.47: (6, 12),
    0.48: (6, 13),
    0.49: (6, 13),
    0.50: (7, 14),
    0.51: (7, 14),
    0.52: (7, 15),
    0.53: (8, 16),
    0.54: (8, 16),
    0.55: (8, 17),
    0.56: (8, 17),
    0.57: (9, 18),
    0.58: (9, 19),
    0.59: (9, 19),
    0.60: (10, 20),
    0.61: (10, 21),
    0.62: (11, 22),
    0.63: (11, 22),
    0.64: (11, 23),
    0.65: (12, 24),
    0.66: (12, 24),
    0.67: (12, 25),
    0.68: (13, 26),
    0.69: (13, 27),
}
DEFAULT_FIELD_DIAMETER_MM = 0.55


def field_area_mm2(diameter_mm: float) -> float:
    """The area of one round high-power field."""
    return math.pi * (diameter_mm / 2) ** 2


def field_diameter_mm(area_mm2: float) -> float:
    """The diameter of a round field of ``area_mm2`` (to choose the table's row)."""
    return 2 * math.sqrt(area_mm2 / math.pi)


def cut_offs(diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM) -> tuple[int, int]:
    """The table's row for ``diameter_mm`` (rounded to 0.01 mm): the highest count scoring 1
    and the highest scoring 2."""
    row = round(diameter_mm, 2)
    if row not in FIELD_DIAMETER_TABLE:
        low, high = min(FIELD_DIAMETER_TABLE), max(FIELD_DIAMETER_TABLE)
        raise ValueError(
            f"field diameter {diameter_mm:g} mm is outside the grading table "
            f"({low:.2f}–{high:.2f} mm)"
        )
    return FIELD_DIAMETER_TABLE[row]


def mitotic_score(count_per_10_hpf: float, diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM) -> int:
    """1, 2 or 3 for a count of mitoses in 10 HPF of ``diameter_mm`` fields."""
    if count_per_10_hpf < 0 or not math.isfinite(count_per_10_hpf):
        raise ValueError(f"a mitotic count is a number ≥ 0, not {count_per_10_hpf}")
    one, two = cut_offs(diameter_mm)
    count = math.floor(count_per_10_hpf + 1e-9)  # counts are whole figures
    return 1 if count <= one else 2 if count <= two else 3


class HotspotFinder:
    """The densest window of 10 fields over an analysed-area mask, for many sets of
    mitoses: the analysed area of every window is computed once, so each `find` is one
    histogram and one box filter on a coarse grid.

    Windows lie inside the image, centred on grid cells; only those with at least half of
    min(window, all analysed area) analysed compete, so a sliver of tissue with one mitosis
    is not a hotspot; an image smaller than a window is one window.
    `detection.run.densest_area` (the cohort's summary) is this on the mask's own grid.
    """

    def __init__(
        self,
        analysed: TissueMask,
        mpp0: tuple[float, float],
        *,
        diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM,
        hpf_mm2: float | None = None,
        fields: int = 10,
        coarsen: bool = True,
    ) -> None:
        """``hpf_mm2`` (if given) is the field's area instead of ``diameter_mm``'s;
        ``coarsen=False`` searches the mask's own grid (the cohort's summary)."""
        self.fields = fields
        self.hpf_mm2 = field_area_mm2(diameter_mm) if hpf_mm2 is None else hpf_mm2
        self.side_um = math.sqrt(fields * self.hpf_mm2) * 1e3
        mask = analysed.mask.astype(np.float64)
        cell_um = (analysed.downsample[0] * mpp0[0], analysed.downsample[1] * mpp0[1])
        factor = max(1, int(self.side_um / max(cell_um) / CELLS_PER_WINDOW)) if coarsen else 1
        if factor > 1:  # block means: the analysed fraction of each coarse cell
            h, w = (-(-n // factor) * factor for n in mask.shape)
            padded = np.zeros((h, w))
            padded[: mask.shape[0], : mask.shape[1]] = mask
            mask = padded.reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))
        self.downsample = (analysed.downsample[0] * factor, analysed.downsample[1] * factor)
        self.shape = mask.shape
        self.cell_um2 = cell_um[0] * cell_um[1] * factor * factor
        self.total_um2 = float(mask.sum()) * self.cell_um2
        size = tuple(
            max(round(self.side_um / (d * m)), 1)
            for d, m in zip(self.downsample, mpp0, strict=True)
        )
        self.size = size
        self.cells = size[0] * size[1]
        self.area = uniform_filter(mask, size, mode="constant") * self.cells * self.cell_um2 / 1e6
        eligible = self.area >= 0.5 * min(self.cells * self.cell_um2, self.total_um2) / 1e6 - 1e-12
        for axis, (length, side) in enumerate(zip(mask.shape, size, strict=True)):
            centres = np.arange(length)
            inside = (centres >= side // 2) & (centres - side // 2 + side <= length)
            if length < side:
                inside = centres == length // 2
            eligible &= inside[:, None] if axis == 0 else inside[None, :]
        self.eligible = eligible
        self.analysed = mask > 0

    def find(self, centres_yx: np.ndarray) -> dict[str, float] | None:
        """The hotspot's count, area, per mm² and per 10 HPF, and its level-0 centre."""
        if self.total_um2 <= 0:
            return None
        centres = np.asarray(centres_yx, float).reshape(-1, 2)
        rows = np.floor(centres[:, 0] / self.downsample[0]).astype(int)
        cols = np.floor(centres[:, 1] / self.downsample[1]).astype(int)
        ok = (rows >= 0) & (cols >= 0) & (rows < self.shape[0]) & (cols < self.shape[1])
        rows, cols = rows[ok], cols[ok]
        keep = self.analysed[rows, cols]
        counts = np.zeros(self.shape)
        np.add.at(counts, (rows[keep], cols[keep]), 1.0)
        count = np.rint(uniform_filter(counts, self.size, mode="constant") * self.cells)
        density = np.where(self.eligible, count / np.maximum(self.area, 1e-12), -1.0)
        best = np.unravel_index(int(np.argmax(density)), density.shape)
        per_mm2 = float(density[best])
        return {
            "count": float(count[best]),
            "area_mm2": float(self.area[best]),
            "per_mm2": per_mm2,
            "per_10_hpf": per_mm2 * self.fields * self.hpf_mm2,
            "centre_y": (best[0] + 0.5) * self.downsample[0],
            "centre_x": (best[1] + 0.5) * self.downsample[1],
        }


def grade(
    centres_yx: np.ndarray,
    analysed: TissueMask,
    mpp0: tuple[float, float],
    *,
    diameter_mm: float = DEFAULT_FIELD_DIAMETER_MM,
    finder: HotspotFinder | None = None,
) -> dict[str, float | int | None]:
    """Mitoses per mm² of the analysed area, the 10-HPF hotspot for fields of
    ``diameter_mm``, and its mitotic score. ``centres_yx`` are the counted mitoses
    (level-0 px); ``finder``: a `HotspotFinder` of this mask already built (a review
    regrades on every decision)."""
    cell_um2 = analysed.downsample[0] * mpp0[0] * analysed.downsample[1] * mpp0[1]
    area_mm2 = float(analysed.mask.sum()) * cell_um2 / 1e6
    hpf = field_area_mm2(diameter_mm)
    centres = np.asarray(centres_yx, float).reshape(-1, 2)
    if finder is None:
        finder = HotspotFinder(analysed, mpp0, diameter_mm=diameter_mm)
    hotspot = finder.find(centres)
    count = hotspot["count"] if hotspot else 0.0
    # Scored per 10 fields of analysed tissue: a window partly off the tissue counts the
    # fields it holds, as a pathologist counts 10 fields of tumour.
    per_10_hpf = hotspot["per_10_hpf"] if hotspot else 0.0
    return {
        "mitoses": len(centres),
        "area_mm2": area_mm2,
        "per_mm2": len(centres) / area_mm2 if area_mm2 > 0 else None,
        "field_diameter_mm": diameter_mm,
        "hpf_mm2": hpf,
        "hotspot_count": int(count),
        "hotspot_per_10_hpf": per_10_hpf if hotspot else None,
        "hotspot_area_mm2": hotspot["area_mm2"] if hotspot else None,
        "hotspot_centre_y": hotspot["centre_y"] if hotspot else None,
        "hotspot_centre_x": hotspot["centre_x"] if hotspot else None,
        "hotspot_side_um": math.sqrt(10 * hpf) * 1e3,
        "mitotic_score": mitotic_score(per_10_hpf, diameter_mm),
    }
