"""Grids over a slide (heatmaps, masks) as OME-Zarr (OME-NGFF 0.4, Zarr format 2).

NGFF 0.4 is what napari-ome-zarr, ome-zarr-py, QuPath's and Bio-Formats' readers all
open today. The image is a multiscale pyramid in µm with a translation, so it lands on
the slide it came from; masks go under ``labels/`` as the spec's label images, with a
colour per value. The folder is written beside its final name and renamed into place,
so a reader never meets a half-written store.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from napari_mitosis.io.output_file import atomic_directory
from napari_mitosis.io.pyramid_tiff import pyramid_levels

NGFF_VERSION = "0.4"
CHUNK = 256


def _multiscales(
    levels: list[Any],
    name: str,
    *,
    mpp0: tuple[float, float] | None,
    origin_level0: tuple[float, float],
    cell_level0: float,
) -> list[dict[str, Any]]:
    """NGFF multiscales for a grid whose cell (i, j) covers level-0 pixels
    ``origin + (i, j) × cell``; coordinates are of pixel centres, as napari places them.
    A 3-D grid is (c, y, x): one channel per class."""
    unit = mpp0 if mpp0 is not None else (1.0, 1.0)
    axes = [{"name": axis, "type": "space"} for axis in ("y", "x")]
    if mpp0 is not None:
        for axis in axes:
            axis["unit"] = "micrometer"
    channels = levels[0].ndim == 3
    if channels:
        axes.insert(0, {"name": "c", "type": "channel"})
    datasets = []
    for index, level in enumerate(levels):
        first, this = levels[0].shape[-2:], level.shape[-2:]
        factor = (first[0] / this[0], first[1] / this[1])
        scale = [cell_level0 * f * u for f, u in zip(factor, unit, strict=True)]
        translation = [
            (o + cell_level0 * f / 2 - 0.5) * u
            for o, f, u in zip(origin_level0, factor, unit, strict=True)
        ]
        if channels:
            scale, translation = [1.0, *scale], [0.0, *translation]
        datasets.append(
            {
                "path": str(index),
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return [{"version": NGFF_VERSION, "name": name, "axes": axes, "datasets": datasets}]


def _omero(
    names: list[str] | None, colours: list[tuple[int, int, int]] | None, count: int
) -> dict[str, Any]:
    """OMERO rendering metadata: a name, colour and [0, 1] window per channel."""
    names = names or [f"channel {k}" for k in range(count)]
    colours = colours or [(255, 255, 255)] * count
    return {
        "channels": [
            {
                "label": str(name),
                "color": "{:02X}{:02X}{:02X}".format(*colour),
                "active": True,
                "window": {"start": 0.0, "end": 1.0, "min": 0.0, "max": 1.0},
            }
            for name, colour in zip(names, colours, strict=True)
        ]
    }


def _write_levels(group: zarr.Group, levels: list[Any]) -> None:
    for index, level in enumerate(levels):
        data = np.asarray(level)
        array = group.create_array(
            str(index),
            shape=data.shape,
            chunks=tuple(min(CHUNK, s) for s in data.shape),
            dtype=data.dtype,
            chunk_key_encoding={"name": "v2", "separator": "/"},  # NGFF 0.4 wants "/"
        )
        array[...] = data


def write_ome_zarr(
    path: str | Path,
    image: Any,
    *,
    name: str = "image",
    mpp0: tuple[float, float] | None = None,
    origin_level0: tuple[float, float] = (0.0, 0.0),
    cell_level0: float = 1.0,
    labels: Mapping[str, np.ndarray] | None = None,
    colours: Mapping[int, tuple[int, int, int, int]] | None = None,
    label_names: Mapping[int, str] | None = None,
    channel_names: list[str] | None = None,
    channel_colours: list[tuple[int, int, int]] | None = None,
    extra: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a 2-D ``image`` — or a (c, y, x) one, a channel per ``channel_names`` — and
    (y, x) ``labels`` as one OME-Zarr folder, atomically.

    ``mpp0`` is the slide's level-0 µm/pixel (y, x); ``extra`` is kept under the
    ``napari_mitosis`` attribute (threshold, patch size…); ``label_names`` become the
    label image's properties (value → class name).
    """
    path = Path(path)
    image = np.asarray(image)
    if image.ndim not in (2, 3) or min(image.shape) < 1:
        raise ValueError(f"{path}: expected a non-empty (c,) y, x grid, got shape {image.shape}")
    geometry = {"mpp0": mpp0, "origin_level0": origin_level0, "cell_level0": cell_level0}
    with atomic_directory(path, overwrite=overwrite) as tmp:
        root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
        if image.ndim == 3:  # a pyramid per channel, stacked back to (c, y, x)
            per_channel = pyramid_levels(np.moveaxis(image, 0, -1), tile=CHUNK)
            levels = [np.moveaxis(np.asarray(level), -1, 0) for level in per_channel]
            root.attrs["omero"] = _omero(channel_names, channel_colours, len(image))
        else:
            levels = pyramid_levels(image, tile=CHUNK)
        root.attrs["multiscales"] = _multiscales(levels, name, **geometry)
        root.attrs["napari_mitosis"] = dict(extra or {})
        _write_levels(root, levels)
        if labels:
            group = root.create_group("labels")
            group.attrs["labels"] = list(labels)
            for label_name, mask in labels.items():
                mask = np.asarray(mask)
                if mask.shape != image.shape[-2:]:
                    raise ValueError(
                        f"{path}: label {label_name!r} has shape {mask.shape}, "
                        f"the image {image.shape}"
                    )
                sub = group.create_group(label_name)
                mask_levels = pyramid_levels(mask, tile=CHUNK, labels=True)
                sub.attrs["multiscales"] = _multiscales(mask_levels, label_name, **geometry)
                sub.attrs["image-label"] = {
                    "version": NGFF_VERSION,
                    "colors": [
                        {"label-value": int(v), "rgba": list(rgba)}
                        for v, rgba in (colours or {}).items()
                    ],
                    "source": {"image": "../../"},
                }
                if label_names:
                    sub.attrs["image-label"] = {
                        **sub.attrs["image-label"],
                        "properties": [
                            {"label-value": int(v), "class": str(n)} for v, n in label_names.items()
                        ],
                    }
                _write_levels(sub, mask_levels)
    return path


@dataclass
class OmeZarrGrid:
    """What `read_ome_zarr` returns: lazy levels with their placement, finest first."""

    levels: list[Any]
    scale: tuple[float, ...]  # of level 0; coarser levels follow from their shapes
    translate: tuple[float, ...]
    unit: str | None
    labels: dict[str, list[Any]]
    extra: dict[str, Any]
    channels: list[dict[str, Any]] = field(default_factory=list)  # OMERO channel metadata
    label_names: dict[str, dict[int, str]] = field(default_factory=dict)


def read_ome_zarr(path: str | Path) -> OmeZarrGrid:
    """Open a 2-D OME-Zarr image (and its labels) lazily, e.g. a heatmap we wrote."""
    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
        (multiscale,) = root.attrs["multiscales"][:1]
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError) as err:
        raise ValueError(f"{path}: not an OME-Zarr image ({err})") from err
    first = multiscale["datasets"][0]
    transforms = {t["type"]: t for t in first.get("coordinateTransformations", [])}
    scale = tuple(transforms.get("scale", {}).get("scale", (1.0, 1.0)))
    translate = tuple(transforms.get("translation", {}).get("translation", (0.0,) * len(scale)))
    unit = multiscale.get("axes", [{}])[-1].get("unit")
    labels: dict[str, list[Any]] = {}
    label_names: dict[str, dict[int, str]] = {}
    if "labels" in root:
        for name in root["labels"].attrs.get("labels", []):
            group = root["labels"][name]
            datasets = group.attrs["multiscales"][0]["datasets"]
            labels[name] = [group[d["path"]] for d in datasets]
            properties = group.attrs.get("image-label", {}).get("properties", [])
            label_names[name] = {int(p["label-value"]): str(p.get("class")) for p in properties}
    return OmeZarrGrid(
        [root[d["path"]] for d in multiscale["datasets"]],
        scale,
        translate,
        unit,
        labels,
        dict(root.attrs.get("napari_mitosis", {})),
        list(root.attrs.get("omero", {}).get("channels", [])),
        label_names,
    )
