"""Slide patches decoded and assembled on the model's device.

On a GPU the CPU's JPEG decoding and Python's patch assembly, not the model, limit a
whole-slide run. Here a batch of patches is served from the tiles under it: their JPEG
streams (`TiffTiles.jpeg_stream`, Aperio's abbreviated ones completed) are decoded together
by `torchvision.io.decode_jpeg` on ``device`` — nvJPEG on CUDA, libjpeg-turbo on the CPU,
the same call — and the patches are cut across tile borders and resized there, so on a
GPU the pixels never return to the host. Tiles that are not JPEG (LZW, Deflate, raw) or were
never written are decoded on the CPU as before and moved over. On CUDA each reader works
on its own stream, so the next batch is decoded while the model runs on the default
stream, and CPU-decoded tiles travel from pinned memory.

torchvision marks its image decoders deprecated (0.29) in favour of TorchCodec; the call
here is one function, to be swapped when TorchCodec's batched GPU JPEG decoding is the
well-kept path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _on(stream: Any) -> Any:
    """``torch.cuda.stream(stream)``, or nothing to enter on the CPU."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def decode_jpeg_streams(streams: Sequence[bytes], device: str | torch.device) -> list[torch.Tensor]:
    """(3, h, w) uint8 tensors on ``device``, one per complete JPEG stream, decoded as one
    batch (nvJPEG's batched decoder on CUDA)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    if not streams:
        return []
    data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
    decoded = decode_jpeg(data, mode=ImageReadMode.RGB, device=torch.device(device))
    return list(decoded)


class DeviceTileReader:
    """Patches of one level of a `TiffTiles` slide, as (n, 3, h, w) uint8 on ``device``.

    Decoded tiles are kept for the reader's life up to ``cache_tiles`` (neighbouring
    batches share tiles); ``background`` fills what lies outside the level, as the CPU
    reads do, and ``unwritten`` (default: ``background``) the tiles a scanner never wrote.
    Thread-safe: reader threads take turns (one batch decodes at a time)."""

    def __init__(
        self,
        tiles: Any,
        level: int,
        device: str | torch.device = "cpu",
        *,
        background: Sequence[int] = (255, 255, 255),
        unwritten: Sequence[int] | None = None,
        cache_tiles: int = 4096,
    ) -> None:
        if level not in tiles.levels:
            raise ValueError(f"{tiles.path}: level {level} is not one our decoder reads")
        self.tiles, self.level, self.device = tiles, level, torch.device(device)
        self.page = tiles.levels[level]
        self.background = np.asarray(background, np.uint8)
        self.unwritten = self.background if unwritten is None else np.asarray(unwritten, np.uint8)
        self.cache_tiles = cache_tiles
        # On CUDA a reader decodes and assembles on its own stream, so reading the next
        # batch overlaps the forward pass on the default stream.
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._lock = threading.Lock()
        self._cache: dict[int, torch.Tensor] = {}
        self.decoded_on_device = 0  # tiles decoded by decode_jpeg (for tests and benchmarks)

    def _tile_indices(self, y0: int, y1: int, x0: int, x1: int) -> list[int]:
        page = self.page
        th, tw = page.tile_height, page.tile_width
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, page.height), min(x1, page.width)
        if y1 <= y0 or x1 <= x0:
            return []
        return [
            ty * page.tiles_across + tx
            for ty in range(y0 // th, (y1 - 1) // th + 1)
            for tx in range(x0 // tw, (x1 - 1) // tw + 1)
        ]

    def _load(self, indices: set[int]) -> None:
        """Decode the tiles not yet held: JPEG ones in one batch on the device."""
        missing = sorted(i for i in indices if i not in self._cache)
        if len(self._cache) + len(missing) > self.cache_tiles:
            self._cache.clear()
        streams, jpeg = [], []
        for index in missing:
            stream = self.tiles.jpeg_stream(self.level, index)
            if stream is None:  # not JPEG, or a tile never written: the CPU decoder
                tile = torch.from_numpy(
                    np.array(self.tiles.tile(self.level, index, self.unwritten))
                )
                if self._stream is not None:  # pinned, so the copy is asynchronous
                    tile = tile.pin_memory()
                self._cache[index] = tile.permute(2, 0, 1).to(self.device, non_blocking=True)
            else:
                streams.append(stream)
                jpeg.append(index)
        for index, tile in zip(jpeg, decode_jpeg_streams(streams, self.device), strict=True):
            self._cache[index] = tile[:, : self.page.tile_height, : self.page.tile_width]
        self.decoded_on_device += len(jpeg)

    def _patch(self, y0: int, x0: int, height: int, width: int) -> torch.Tensor:
        page = self.page
        th, tw = page.tile_height, page.tile_width
        out = torch.empty((3, height, width), dtype=torch.uint8, device=self.device)
        out[:] = torch.as_tensor(self.background, device=self.device).view(3, 1, 1)
        top, left = max(y0, 0), max(x0, 0)
        bottom, right = min(y0 + height, page.height), min(x0 + width, page.width)
        for index in self._tile_indices(y0, y0 + height, x0, x0 + width):
            ty, tx = divmod(index, page.tiles_across)
            a, b = max(top, ty * th), min(bottom, (ty + 1) * th)
            c, d = max(left, tx * tw), min(right, (tx + 1) * tw)
            out[:, a - y0 : b - y0, c - x0 : d - x0] = self._cache[index][
                :, a - ty * th : b - ty * th, c - tx * tw : d - tx * tw
            ]
        return out

    def patches(
        self,
        origins: np.ndarray,
        size: tuple[int, int],
        out_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Patches of ``size`` (h, w) level px at ``origins`` (n, 2) (y, x), on the device;
        resized to ``out_size`` (bilinear, antialiased, as the CPU engines) when given."""
        origins = np.asarray(origins, int).reshape(-1, 2)
        height, width = size
        needed: set[int] = set()
        for y0, x0 in origins:
            needed.update(self._tile_indices(int(y0), int(y0) + height, int(x0), int(x0) + width))
        with self._lock, _on(self._stream):
            self._load(needed)
            batch = torch.stack([self._patch(int(y), int(x), height, width) for y, x in origins])
            if out_size is not None and tuple(out_size) != (height, width):
                batch = (
                    F.interpolate(
                        batch.float(),
                        size=tuple(out_size),
                        mode="bilinear",
                        antialias=True,
                        align_corners=False,
                    )
                    .round()
                    .clamp(0, 255)
                    .to(torch.uint8)
                )
            if self._stream is not None:
                # whole before it is handed over; the allocator keeps it until the
                # default stream, where the model reads it, is done with it
                self._stream.synchronize()
                batch.record_stream(torch.cuda.default_stream(self.device))
        return batch


def level_batch_reader(
    source: Any,
    device: str | torch.device,
    size: int,
    *,
    fill: int = 0,
    shift: float = 0.0,
) -> Callable[[np.ndarray], torch.Tensor] | None:
    """A tiled run's ``read_batch`` from device tiles: (n, 2) origins of one level → the
    (n, 3, size, size) uint8 patches at ``origins + shift`` (rounded as the CPU reads
    round), on ``device``; ``fill`` outside the level and in tiles never written, as the
    CPU reads. None when the level is not a TIFF our decoder reads (OpenSlide-only
    formats, plain images): the run keeps its CPU reads."""
    handle = getattr(source, "handle", None)
    level = getattr(source, "level", None)
    tiles = handle.tiles(level) if level is not None and hasattr(handle, "tiles") else None
    if tiles is None or level not in tiles.levels:
        return None
    reader = DeviceTileReader(
        tiles,
        level,
        device,
        background=(fill,) * 3,
        unwritten=getattr(handle, "background", (fill,) * 3),
    )

    def read_batch(origins: np.ndarray) -> torch.Tensor:
        corners = np.round(np.asarray(origins, float) + shift).astype(int)
        return reader.patches(corners, (size, size))

    return read_batch
