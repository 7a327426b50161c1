"""Dynamic batching: concurrent requests to one model share a forward pass.

Requests queue up; a worker takes the first, waits at most ``window_s`` for more (up to
``max_images``), and runs them as one batch in a thread, so the event loop keeps accepting
requests meanwhile — which are then the next batch. Under load the model runs at its own
batched rate; a lone request waits only the window.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np


class Batcher:
    """``await batcher(images)`` → that request's rows of ``run(all queued images)``."""

    def __init__(
        self,
        run: Callable[[list[np.ndarray]], Any],
        *,
        window_s: float = 0.005,
        max_images: int = 64,
    ) -> None:
        self.run, self.window_s, self.max_images = run, window_s, max_images
        self._queue: asyncio.Queue[tuple[list[np.ndarray], asyncio.Future[Any]]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self.batches: list[int] = []  # images per forward pass (the last 1,000), for tests

    async def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._queue is None:  # a new event loop (tests, reload)
            self._loop, self._queue = loop, asyncio.Queue()
            self._worker = loop.create_task(self._serve(self._queue))
        future: asyncio.Future[Any] = loop.create_future()
        await self._queue.put((images, future))
        return await future

    async def _serve(
        self, queue: asyncio.Queue[tuple[list[np.ndarray], asyncio.Future[Any]]]
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await queue.get()]
            count = len(waiting[0][0])
            deadline = loop.time() + self.window_s
            while count < self.max_images:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), left)
                    except TimeoutError:
                        break
                waiting.append(item)
                count += len(item[0])
            images = [image for request, _ in waiting for image in request]
            try:
                scores = np.asarray(await asyncio.to_thread(self.run, images))
            except Exception as err:  # every request of the batch hears of it
                for _, future in waiting:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.batches = [*self.batches[-999:], len(images)]
            start = 0
            for request, future in waiting:
                if not future.done():
                    future.set_result(scores[start : start + len(request)])
                start += len(request)
