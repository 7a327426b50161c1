"""Class-folder data sets: ``root/<class>/*.png`` (ultrasound frames, IDC patches, mitosis
crops), with an optional ``labels.csv`` (``file`` and ``slide``/``patient``/``case``
columns) saying which images share a source, so that splits never put one slide on both
sides. Classifiers train on them; the mitosis detector trains on folders of crops centred
on a figure in the same layout.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from napari_mitosis.io.formats import PLAIN_IMAGE_SUFFIXES


def resize_rgb(block: np.ndarray, size: int) -> np.ndarray:
    """Area-averaged resize with Pillow (uint8 (h, w[, c]) → (size, size[, c]))."""
    if block.shape[0] == size and block.shape[1] == size:
        return block
    return np.asarray(Image.fromarray(block).resize((size, size), Image.Resampling.BOX))


def centre_crop_of(image: np.ndarray, size: int | None) -> np.ndarray:
    """The central ``size`` px of an image (unchanged when ``size`` is None or too big)."""
    if not size or min(image.shape[:2]) <= size:
        return image
    y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[y : y + size, x : x + size]


@dataclass
class ImageFolder:
    """Images of a class-folder data set, with labels and source groups."""

    paths: list[Path]
    labels: np.ndarray  # index into ``classes``
    classes: tuple[str, ...]
    groups: np.ndarray  # slide/patient of each image (the image itself when unknown)

    def load(
        self, size: int | None = None, indices: Any = None, centre_crop: int | None = None
    ) -> np.ndarray:
        """Images (all, or ``indices``) as uint8 (N, size, size, 3): the central
        ``centre_crop`` px when given, resized to ``size`` (default: unchanged)."""
        images = []
        chosen = self.paths if indices is None else [self.paths[i] for i in indices]
        for path in chosen:
            try:
                with Image.open(path) as handle:
                    rgb = np.asarray(handle.convert("RGB"))
            except OSError as err:
                raise ValueError(f"{path}: not a readable image ({err})") from err
            rgb = centre_crop_of(rgb, centre_crop)
            size = size or rgb.shape[0]
            images.append(resize_rgb(rgb, size))
        return np.stack(images)

    def votes(self, root: str | Path, columns: tuple[str, ...]) -> np.ndarray:
        """Each image's share of ``columns`` of ``root/labels.csv`` that say yes (true/1/
        yes) to the positive class: soft targets from several annotators. An image the
        table does not list keeps its folder's class (0 or 1)."""
        table = Path(root) / "labels.csv"
        if not table.is_file():
            raise ValueError(f"{table}: label votes need this table (file, {', '.join(columns)})")
        with table.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        header = set(rows[0]) if rows else set()
        missing = [c for c in ("file", *columns) if c not in header]
        if missing:
            raise ValueError(f"{table}: no column {', '.join(missing)}; it has {sorted(header)}")
        shares = {}
        for line, row in enumerate(rows, start=2):
            said = [(row[c] or "").strip().lower() for c in columns]  # short row: None
            unknown = [v for v in said if v not in _YES | _NO]
            if unknown:
                raise ValueError(f"{table}, line {line}: {unknown[0]!r} is not a yes/no vote")
            shares[row["file"]] = sum(v in _YES for v in said) / len(columns)
        own = [str(p.relative_to(root)) for p in self.paths]
        pairs = zip(own, self.labels, strict=True)
        return np.asarray([shares.get(n, float(y)) for n, y in pairs], np.float32)


_YES, _NO = {"true", "1", "yes"}, {"false", "0", "no"}


def class_folders(root: str | Path, classes: tuple[str, ...] | None = None) -> ImageFolder:
    """``root/<class>/`` images; class order = ``classes`` or sorted folder names."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = tuple(classes or found)
    missing = [c for c in classes if not (root / c).is_dir()]
    if missing or len(classes) < 2:
        lacking = f", but not {missing}" if missing else ""
        raise ValueError(
            f"{root}: needs one sub-folder per class (at least two); found {found or 'none'}"
            f"{lacking}"
        )
    paths, labels = [], []
    for index, name in enumerate(classes):
        members = sorted(
            p for p in (root / name).iterdir() if p.suffix.lower() in PLAIN_IMAGE_SUFFIXES
        )
        if not members:
            raise ValueError(f"{root / name}: holds no images")
        paths += members
        labels += [index] * len(members)
    groups = _groups(root, paths)
    return ImageFolder(paths, np.asarray(labels), classes, groups)


def _groups(root: Path, paths: list[Path]) -> np.ndarray:
    table = root / "labels.csv"
    own = np.asarray([str(p.relative_to(root)) for p in paths])
    if not table.is_file():
        return own
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    column = next((c for c in ("slide", "patient", "case") if rows and c in rows[0]), None)
    if column is None or "file" not in rows[0]:
        return own
    source = {r["file"]: r[column] for r in rows}
    return np.asarray([source.get(name, name) for name in own])


def split_by_group(
    labels: np.ndarray,
    groups: np.ndarray,
    *,
    fraction: float,
    seed: int = 0,
    source: str = "data",
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, held-out) indices: about ``fraction`` held out, whole groups only, class
    balance kept as far as groups allow (scikit-learn's StratifiedGroupKFold)."""
    if len(np.unique(groups)) < 2:
        raise ValueError("need at least two slides/patients to split by")
    folds = max(2, round(1 / fraction))
    from sklearn.model_selection import StratifiedGroupKFold  # 1 s to import: on use only

    fewest = int(np.bincount(np.unique(labels, return_inverse=True)[1]).min())
    if fewest < folds:
        raise ValueError(
            f"{source}: holding out {fraction:g} needs at least {folds} images of each class, "
            f"the smallest has {fewest}; hold out a larger share or add images"
        )
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    rest, held = next(splitter.split(np.zeros(len(labels)), labels, groups))
    return rest, held


def describe(folder: ImageFolder) -> dict[str, Any]:
    counts = {c: int((folder.labels == i).sum()) for i, c in enumerate(folder.classes)}
    return {"images": len(folder.paths), "groups": len(np.unique(folder.groups)), **counts}
