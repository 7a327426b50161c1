"""COCO run-length encoding of binary masks, byte-compatible with pycocotools.

COCO counts runs over the mask in column-major (Fortran) order, starting with a run of
zeros (possibly empty). The compact string form stores each count minus the count two
places before it, in 5-bit groups offset by 48 into printable ASCII.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO run lengths of a 2-D mask (anything non-zero is foreground)."""
    if mask.ndim != 2:
        raise ValueError(f"RLE needs a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, bool).ravel(order="F")
    if flat.size == 0:
        return []
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return [0, *counts] if flat[0] else counts


def _counts_to_string(counts: list[int]) -> str:
    chars: list[str] = []
    for i, count in enumerate(counts):
        x = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def _string_to_counts(text: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode_rle(mask: np.ndarray) -> dict[str, Any]:
    """``{"size": [h, w], "counts": str}``, as pycocotools' ``mask.encode`` gives."""
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": _counts_to_string(rle_counts(mask)),
    }


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """A bool mask from a COCO RLE (compact string or uncompressed list of counts)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _string_to_counts(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if sum(runs) != height * width or any(r < 0 for r in runs):
        raise ValueError(f"RLE counts cover {sum(runs)} pixels, the mask has {height * width}")
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((height, width), order="F")


def _counts_from_ones(flat_ones: np.ndarray, total: int) -> list[int]:
    """COCO counts from the sorted column-major indices of the foreground pixels."""
    if len(flat_ones) == 0:
        return [total]
    breaks = np.flatnonzero(np.diff(flat_ones) != 1) + 1
    starts = flat_ones[np.r_[0, breaks]]
    ends = flat_ones[np.r_[breaks - 1, len(flat_ones) - 1]] + 1
    counts: list[int] = []
    previous = 0
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        counts += [start - previous, end - start]
        previous = end
    if previous < total:
        counts.append(total - previous)
    return counts


def labels_to_coco(labels: Any, *, category_id: int = 1) -> list[dict[str, Any]]:
    """COCO annotations (RLE over the whole image, xywh bbox, area) for each label.

    Each component is encoded from its bounding-box crop, so the cost follows the
    components' size, not the image's (a NumPy or zarr label image).
    """
    from scipy import ndimage

    labels = np.asarray(labels)
    height, width = labels.shape
    annotations = []
    for value, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        rows, cols = np.nonzero(labels[box] == value)
        rows, cols = rows + box[0].start, cols + box[1].start
        flat = np.sort(cols.astype(np.int64) * height + rows)
        counts = _counts_from_ones(flat, height * width)
        x, y = int(cols.min()), int(rows.min())
        annotations.append(
            {
                "id": int(value),
                "category_id": category_id,
                "segmentation": {"size": [height, width], "counts": _counts_to_string(counts)},
                "area": len(rows),
                "bbox": [x, y, int(cols.max()) + 1 - x, int(rows.max()) + 1 - y],
                "iscrowd": 0,
            }
        )
    return annotations
