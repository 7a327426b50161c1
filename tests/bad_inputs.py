"""A corpus of bad (and awkward but valid) inputs, built on demand in a folder.

Each kind is one file (or folder) and what every entry point must make of it: ``None``
when it must work, else a fragment the error message must contain (after the file name).
"""

from __future__ import annotations

import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

#: Entry points that only open the file, and those that run a model on it.
OPENERS = ("info", "reader")
MODELS = ("classify", "detect", "segment")


@dataclass(frozen=True)
class Kind:
    name: str
    path: Path
    on_open: str | None  # what `info` and the napari reader say (None: it opens)
    on_model: str | None  # what a model command says (None: it runs)
    checkpoint: str = ""  # a bad checkpoint to use instead of the good one
    on_read: str | None = None  # opens lazily, but reading its pixels must fail so


def _rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Synthetic H&E (tissue on glass), so the valid kinds pass tissue detection too."""
    from napari_mitosis.samples.synthetic import synthetic_slide

    return synthetic_slide(max(height, 64), max(width, 64), seed=seed)[0][:height, :width]


def _tiled_tiff(path: Path, *, compression: str = "zlib", side: int = 512) -> Path:
    with tifffile.TiffWriter(path) as tif:
        for level in range(2):
            res = 1e4 / (0.25 * 2**level)
            tif.write(
                _rgb(side, side)[:: 2**level, :: 2**level],
                tile=(256, 256),
                photometric="rgb",
                compression=compression,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
            )
    return path


def _set_compression(path: Path, code: int) -> None:
    """Rewrite every page's Compression tag (259) in place to ``code``."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        offsets = [page.tags[259].offset for page in tif.pages]
        order = tif.byteorder
    for offset in offsets:  # the tag entry: code, type, count, value
        data[offset + 8 : offset + 10] = struct.pack(f"{order}H", code)
    path.write_bytes(bytes(data))


def _break_first_tiles(path: Path) -> None:
    """Overwrite each level's first JPEG tile after its start marker with bogus markers."""
    data = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        tiles = [(page.dataoffsets[0], page.databytecounts[0]) for page in tif.pages]
    for start, size in tiles:
        data[start + 2 : start + size] = (b"\xff\x99" * size)[: size - 2]
    path.write_bytes(bytes(data))


def build_corpus(folder: Path, real_svs: Path, dicom_series: Path, checkpoints: dict) -> list[Kind]:
    """Every kind of the corpus, written under ``folder``; ``checkpoints`` maps a task to
    a good checkpoint (a pickle and a wrong-task one are made from them)."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds: list[Kind] = []

    def add(name: str, path: Path, on_open: str | None, on_model: str | None, **kw) -> None:
        kinds.append(Kind(name, path, on_open, on_model, **kw))

    empty = folder / "empty.svs"
    empty.write_bytes(b"")
    add("empty file", empty, "is empty (0 bytes)", "is empty (0 bytes)")

    text = folder / "notes.svs"
    text.write_text("not a slide at all\n")
    add("text named .svs", text, "not recognise", "not recognise")

    truncated = folder / "truncated.svs"
    truncated.write_bytes(real_svs.read_bytes()[: real_svs.stat().st_size // 3])
    add("truncated SVS", truncated, "truncated or damaged", "truncated or damaged")

    weird = _tiled_tiff(folder / "compression.tif")
    _set_compression(weird, 34999)  # no codec anywhere knows it
    add("unsupported TIFF compression", weird, "compression", "compression")

    bad_tile = _tiled_tiff(folder / "bad-tile.tif", compression="jpeg")
    _break_first_tiles(bad_tile)
    add("bogus JPEG marker in a tile", bad_tile, None, "failed", on_read="failed")

    series = folder / "dicom-truncated"
    shutil.copytree(dicom_series, series)
    for instance in series.iterdir():  # every level loses most of its frames
        with instance.open("r+b") as handle:
            handle.truncate(instance.stat().st_size * 3 // 10)
    add("DICOM series with a truncated frame file", series, None, "failed", on_read="failed")

    tiny = folder / "tiny.png"
    Image.fromarray(_rgb(1, 1)).save(tiny)
    add("1×1 PNG", tiny, None, "too small")

    rgba = folder / "rgba.png"
    Image.fromarray(np.dstack([_rgb(256, 256), np.full((256, 256), 200, np.uint8)])).save(rgba)
    add("RGBA PNG (composited on white)", rgba, None, None)

    grey = folder / "grey.png"
    Image.fromarray(_rgb(96, 96)[..., 0]).save(grey)
    add("8-bit grey PNG", grey, None, "8-bit RGB")

    grey16 = folder / "grey16.tif"
    tifffile.imwrite(grey16, (_rgb(96, 96)[..., 0].astype(np.uint16) * 256))
    add("16-bit grey TIFF", grey16, None, "8-bit RGB")

    floats = folder / "float.tif"
    tifffile.imwrite(floats, _rgb(96, 96).astype(np.float32) / 255)
    add("float32 RGB TIFF", floats, None, "8-bit RGB")

    directory = folder / "folder.svs"
    directory.mkdir()
    add("a directory given as a file", directory, "is a directory", "is a directory")

    odd = _tiled_tiff(folder / "slide ü 🧫 (copy).tif", side=256)
    add("spaces, unicode and emoji in the name", odd, None, None)

    unreadable = folder / "locked.svs"
    shutil.copyfile(real_svs, unreadable)
    unreadable.chmod(0)
    add("unreadable file (no permission)", unreadable, "permission denied", "permission denied")

    pickle = folder / "model.safetensors"
    import torch

    torch.save({"weights": torch.zeros(3)}, pickle)
    add("a checkpoint that is a pickle", odd, None, "never loaded", checkpoint=str(pickle))
    add(
        "a checkpoint of the wrong task",
        odd,
        None,
        "model, not a",
        checkpoint="wrong-task",
    )
    return kinds
