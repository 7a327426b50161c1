"""COCO detection JSON as mitosis data sets use it, MIDOG 2021 and MIDOG++ included.

MIDOG's databases are COCO files with two categories, "mitotic figure" and "not mitotic
figure" (imposters: look-alikes the experts rejected), a ``tumor_type`` per image, and
``bbox`` written as corners ``[x1, y1, x2, y2]`` in level-0 pixels, not COCO's
``[x, y, width, height]``. `read_coco` tells the two apart (``box_format="auto"``: the
MIDOG categories mean corners; otherwise a box that only fits its image as corners) and
sorts each image's boxes into mitoses and imposters by category name, so imposters
become hard negatives rather than positives.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

BoxFormat = Literal["auto", "xywh", "xyxy"]
BOX_FORMATS = ("auto", "xywh", "xyxy")
#: Category names of look-alikes: trained on as hard negatives, never counted.
IMPOSTER_WORDS = (
    "not mitotic",
    "non-mitotic",
    "non mitotic",
    "imposter",
    "look-alike",
    "hard negative",
)
#: MIDOG's two category names: their files write boxes as corners.
MIDOG_CATEGORIES = {"mitotic figure", "not mitotic figure"}


def is_imposter(name: str) -> bool:
    return any(word in name.lower() for word in IMPOSTER_WORDS)


@dataclass
class CocoImage:
    id: int
    file_name: str
    width: int | None
    height: int | None
    tumour_type: str
    #: (n, 4) xyxy level-0 px of mitotic figures, and of imposters
    mitoses: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    imposters: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass
class CocoDatabase:
    path: Path
    images: list[CocoImage]
    box_format: str  # what the file's ``bbox`` was read as
    categories: dict[int, str]

    def tumour_types(self) -> dict[str, int]:
        """Images per tumour type ("" when the file names none)."""
        counts: dict[str, int] = {}
        for image in self.images:
            counts[image.tumour_type] = counts.get(image.tumour_type, 0) + 1
        return counts

    def select(self, tumour_types: list[str] | None) -> CocoDatabase:
        """Only the images of ``tumour_types`` (matched without regard to case)."""
        if not tumour_types:
            return self
        wanted = {t.lower() for t in tumour_types}
        known = {t.lower() for t in self.tumour_types()}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"{self.path}: no image of tumour type {', '.join(unknown)} (it has "
                f"{', '.join(sorted(self.tumour_types()))})"
            )
        kept = [i for i in self.images if i.tumour_type.lower() in wanted]
        return CocoDatabase(self.path, kept, self.box_format, self.categories)


def _corners(boxes: np.ndarray, box_format: str) -> np.ndarray:
    if box_format == "xyxy":
        return boxes
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def _guess_format(content: dict, categories: dict[int, str], sizes: dict[int, tuple]) -> str:
    if set(categories.values()) and {n.lower() for n in categories.values()} <= MIDOG_CATEGORIES:
        return "xyxy"
    for a in content.get("annotations", []):
        x, y, w, h = (float(v) for v in a["bbox"])
        width, height = sizes.get(int(a["image_id"]), (None, None))
        overflows = bool(width and height) and (x + w > width + 1 or y + h > height + 1)
        if overflows and x < w <= width and y < h <= height:
            return "xyxy"  # fits its image only as corners
    return "xywh"


def read_coco(path: str | Path, box_format: BoxFormat = "auto") -> CocoDatabase:
    """A COCO detection file's images, each with its mitoses and imposters as xyxy boxes.
    Errors name the file and what is wrong with it."""
    path = Path(path)
    if box_format not in BOX_FORMATS:
        raise ValueError(f"box format {box_format!r}: choose one of {', '.join(BOX_FORMATS)}")
    try:
        content = json.loads(path.read_text())
        categories = {int(c["id"]): str(c["name"]) for c in content.get("categories", [])}
        images = {
            int(i["id"]): CocoImage(
                int(i["id"]),
                str(i["file_name"]),
                int(i["width"]) if i.get("width") else None,
                int(i["height"]) if i.get("height") else None,
                str(i.get("tumor_type", i.get("tumour_type", ""))),
            )
            for i in content["images"]
        }
        sizes = {k: (v.width, v.height) for k, v in images.items()}
        fmt = _guess_format(content, categories, sizes) if box_format == "auto" else box_format
        mitoses: dict[int, list] = {k: [] for k in images}
        imposters: dict[int, list] = {k: [] for k in images}
        for number, a in enumerate(content.get("annotations", []), start=1):
            image_id = int(a["image_id"])
            if image_id not in images:
                raise ValueError(f"annotation {number} names unknown image id {image_id}")
            name = categories.get(int(a.get("category_id", 1)), "mitosis")
            (imposters if is_imposter(name) else mitoses)[image_id].append(
                [float(v) for v in a["bbox"]]
            )
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such COCO file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a COCO detection file (missing {err})") from err
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    for image_id, image in images.items():
        for name, boxes in (("mitoses", mitoses[image_id]), ("imposters", imposters[image_id])):
            corners = _corners(np.asarray(boxes, float).reshape(-1, 4), fmt)
            if len(corners) and ((corners[:, 2:] <= corners[:, :2]).any()):
                raise ValueError(
                    f"{path}: {image.file_name} has boxes with no area as {fmt}; "
                    "give the other box format (--coco-boxes)"
                )
            setattr(image, name, corners)
    if not images:
        raise ValueError(f"{path}: lists no images")
    return CocoDatabase(path, list(images.values()), fmt, categories)


def missing_images(database: CocoDatabase, folder: Path) -> list[str]:
    """The listed images that are not in ``folder``."""
    return [i.file_name for i in database.images if not (folder / i.file_name).is_file()]


def split_groups(groups: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) indices of whole images, ``groups[i]`` image i's domain (a
    tumour type; "" when unnamed): ``fraction`` of each domain is held out, at least one
    image of a domain with two or more, so every domain is validated; when every domain
    has a single image, one image is held out."""
    rng = np.random.default_rng(seed)
    members: dict[str, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    train, held = [], []
    for indices in members.values():
        order = [indices[i] for i in rng.permutation(len(indices))]
        n = min(max(1, round(len(order) * fraction)), len(order) - 1) if len(order) > 1 else 0
        held += order[:n]
        train += order[n:]
    if not held and len(train) > 1:
        held.append(train.pop())
    return sorted(train), sorted(held)


def split_by_image(
    database: CocoDatabase, fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """`split_groups` of a COCO file's images by their tumour type."""
    return split_groups([i.tumour_type for i in database.images], fraction, seed)
