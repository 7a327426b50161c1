"""Folders of crops centred on a mitotic figure as detector training and test fields.

The layout is a class-folder data set (`io.class_folders`: class sub-folders of crops,
``labels.csv`` optional, e.g. ``../shared/data/mitotic-figures``) in which every crop holds
one figure at its centre. Each becomes a field with one box of `BOX_UM` (MIDOG's box
size) around the centre. Since every figure sits at the centre, a detector could learn
the position instead of the figure: training fields are padded (reflected) by a quarter
crop on every side, so the sampler's random crops put the figure anywhere within ± a
quarter crop of their middle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupShuffleSplit

from napari_mitosis.io.class_folders import class_folders

#: Box side (µm) around each centred figure, as the MIDOG challenges draw them.
BOX_UM = 12.0


@dataclass
class CentredCrops:
    """Crops (N, H, W, 3) uint8, each with its figure at the centre, and their sources."""

    images: np.ndarray
    groups: np.ndarray  # slide of each crop (splits keep slides whole)
    names: list[str]

    def boxes(self, mpp: float, box_um: float = BOX_UM) -> list[np.ndarray]:
        """One (1, 4) xyxy box per crop, ``box_um`` wide, at the centre."""
        half = box_um / mpp / 2
        cy, cx = self.images.shape[1] / 2, self.images.shape[2] / 2
        box = np.array([[cx - half, cy - half, cx + half, cy + half]])
        return [box.copy() for _ in range(len(self.images))]

    def centres(self) -> list[np.ndarray]:
        """One (1, 2) (y, x) centroid per crop: the truth the 8 µm rule scores against."""
        centre = np.array([[self.images.shape[1] / 2, self.images.shape[2] / 2]])
        return [centre.copy() for _ in range(len(self.images))]

    def split(self, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out) indices, about ``fraction`` held out, whole slides each side."""
        if len(np.unique(self.groups)) < 2:
            raise ValueError("need crops from at least two slides to split by slide")
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        rest, held = next(splitter.split(self.images[:, 0, 0, 0], groups=self.groups))
        return rest, held


def read_centred_crops(root: str | Path) -> CentredCrops:
    """Every crop of a class-folder data set (all classes are figures)."""
    folder = class_folders(root)
    images = folder.load()
    names = [str(p.relative_to(Path(root))) for p in folder.paths]
    return CentredCrops(images, folder.groups, names)


def other_nuclei(image: np.ndarray, mpp: float, distance_um: float = 8.0) -> np.ndarray:
    """(y, x) of a centred crop's nuclei other than its figure (further than
    ``distance_um`` from the centre): real interphase nuclei beside a figure, which a
    detector must learn to pass over."""
    from napari_mitosis.detection.negative_tissue import nucleus_centres

    nuclei = nucleus_centres(image, mpp)
    centre = np.array(image.shape[:2]) / 2
    return nuclei[np.hypot(*(nuclei - centre).T) * mpp > distance_um].reshape(-1, 2)


def padded_field(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``image`` reflected out by a quarter of its side on every side, ``box`` moved with
    it: the sampler's crops then place the figure anywhere near their middle."""
    pad = image.shape[0] // 4
    grown = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    return grown, np.asarray(box, float) + pad
