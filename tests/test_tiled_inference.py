"""The tiled loop reads ahead on several threads, yet the model sees every tile once, in
grid order, and a stopped run reads nothing more."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from napari_mitosis.engine.tiled_inference import default_readers, iter_tiled
from napari_mitosis.engine.tiling import TileGrid


class Collect:
    def __init__(self) -> None:
        self.origins: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []

    def add(self, origins: np.ndarray, outputs: np.ndarray) -> None:
        self.origins.append(origins.copy())
        self.outputs.append(outputs)


def run(image: np.ndarray, readers: int, read) -> Collect:
    grid = TileGrid.over(image.shape, 32, 0)
    merger = Collect()
    steps = iter_tiled(
        grid,
        image,
        lambda t: t.reshape(len(t), -1).sum(1),
        merger,
        batch_size=5,
        read=read,
        readers=readers,
    )
    list(steps)
    return merger


def test_parallel_readers_give_every_tile_once_in_grid_order() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (224, 192, 3), np.uint8)
    jitter = np.random.default_rng(1)

    def slow_read(y: int, x: int) -> np.ndarray:
        time.sleep(jitter.uniform(0, 0.002))  # reads finish out of order
        return image[y : y + 32, x : x + 32]

    one, many = run(image, 1, slow_read), run(image, 4, slow_read)
    grid = TileGrid.over(image.shape, 32, 0)
    np.testing.assert_array_equal(np.concatenate(many.origins), grid.origins())
    np.testing.assert_array_equal(np.concatenate(many.outputs), np.concatenate(one.outputs))
    expected = [image[y : y + 32, x : x + 32].sum() for y, x in grid.origins()]
    np.testing.assert_array_equal(np.concatenate(many.outputs), expected)


def test_a_stopped_run_reads_nothing_more() -> None:
    image = np.zeros((640, 640, 3), np.uint8)
    grid = TileGrid.over(image.shape, 32, 0)  # 400 tiles
    reads = []
    lock = threading.Lock()

    def read(y: int, x: int) -> np.ndarray:
        with lock:
            reads.append((y, x))
        time.sleep(0.001)
        return image[y : y + 32, x : x + 32]

    steps = iter_tiled(
        grid, image, lambda t: np.zeros(len(t)), Collect(), batch_size=4, read=read, readers=3
    )
    assert next(steps) == (4, 400)
    steps.close()
    after_close = len(reads)
    time.sleep(0.05)
    assert len(reads) == after_close  # no read still running or queued
    assert after_close <= 4 * (3 + 2)  # at most the batches read ahead


def test_default_readers_leave_the_cpu_to_a_cpu_model() -> None:
    assert default_readers("cpu") == 1 and default_readers("cpu", 1024) == 1
    cores = os.cpu_count() or 1
    assert default_readers("cuda", 96) == max(1, min(4, cores - 1))
    assert default_readers("cuda", 256) == max(1, min(8, cores - 1))


def test_a_classification_run_sizes_its_readers_by_the_patch_it_reads() -> None:
    from napari_mitosis.classification.run import ClassificationRun, ClassifierPredictor
    from napari_mitosis.models.checkpoint import ModelCard, build_model

    card = ModelCard("small_cnn", {"outputs": 1}, input_size=96, classes=("normal", "tumour"))
    predictor = ClassifierPredictor(build_model(card), card, "cpu")
    run = ClassificationRun(np.zeros((400, 400, 3), np.uint8), predictor, stride=32)
    assert run.read_px == 96 and run.grid.tile == 32  # cells of 32 px, patches of 96 px


def test_an_unreadable_tile_stops_the_run_with_its_own_error() -> None:
    from napari_mitosis.io.errors import CorruptSlideError

    image = np.zeros((320, 320, 3), np.uint8)
    grid = TileGrid.over(image.shape, 32, 0)  # 100 tiles
    merged = Collect()

    def read(y: int, x: int) -> np.ndarray:
        if (y, x) == (96, 64):
            raise CorruptSlideError("slide.svs", f"reading 32×32 px at ({x}, {y}) failed")
        return image[y : y + 32, x : x + 32]

    steps = iter_tiled(
        grid, image, lambda t: np.zeros(len(t)), merged, batch_size=4, read=read, readers=3
    )
    with pytest.raises(CorruptSlideError, match=r"slide\.svs.*\(64, 96\)"):
        list(steps)
    # Batches before the bad tile were merged; none after it.
    assert sum(len(o) for o in merged.origins) == 32


def test_strip_order_visits_every_cell_once_strip_by_strip() -> None:
    from napari_mitosis.engine.tiling import strip_order

    grid = TileGrid.over((960, 2000), 96, 0, uniform=True)  # 10 × 21 cells
    keep = np.random.default_rng(0).random(len(grid)) > 0.3  # tissue cells only
    origins = grid.origins()[keep]
    ordered = strip_order(origins, 96, strip_px=500)  # strips of 5 cells = 480 px
    assert sorted(map(tuple, ordered)) == sorted(map(tuple, origins))
    strips = ordered[:, 1] // 480
    assert np.all(np.diff(strips) >= 0)  # one strip after the other, left to right
    for s in np.unique(strips):
        inside = ordered[strips == s]
        keys = inside[:, 0] * 10_000 + inside[:, 1]
        assert np.all(np.diff(keys) > 0)  # row-major inside a strip
    assert len(strip_order(origins[:0], 96)) == 0


def test_a_classification_run_reads_in_strips_and_scores_each_cell_in_place() -> None:
    from napari_mitosis.classification.run import ClassificationRun, ClassifierPredictor
    from napari_mitosis.models.checkpoint import ModelCard, build_model

    card = ModelCard("small_cnn", {"outputs": 1}, input_size=32, classes=("normal", "tumour"))
    predictor = ClassifierPredictor(build_model(card), card, "cpu")
    image = np.random.default_rng(0).integers(0, 255, (96, 8992, 3), np.uint8)
    run = ClassificationRun(image, predictor, stride=32, batch_size=64)
    order = run.visit_order()
    assert order[0].tolist() == [0, 0] and order[1].tolist() == [0, 32]
    assert order[128].tolist() == [32, 0]  # 4096 px strips: the second row comes back left
    run.run()
    rows, cols = run.grid.origins().T // 32
    cells = np.stack([image[y : y + 32, x : x + 32] for y, x in run.grid.origins()])
    expected = np.zeros((3, len(run.grid.cols)), np.float32)
    expected[rows, cols] = predictor(cells)
    np.testing.assert_allclose(run.result().heatmap, expected, atol=1e-6)
