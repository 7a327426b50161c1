"""Given data, when I write it, other tools (and we) read back exactly what was meant,
and no existing file is lost."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import dask.array as da
import numpy as np
import openslide
import pytest

from conftest import gradient_rgb
from napari_mitosis import Annotation, OutputExistsError, open_slide, read_geojson, write_geojson
from napari_mitosis.io.ome_zarr import write_ome_zarr
from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
from napari_mitosis.models.checkpoint import ModelCard, build_model, save_checkpoint


def test_image_round_trips_losslessly_as_an_openslide_pyramid(tmp_path: Path) -> None:
    image = gradient_rgb(700, 900)
    path = write_pyramid_tiff(tmp_path / "heat.tif", image, mpp=(0.5, 0.5))
    with openslide.OpenSlide(str(path)) as raw:  # other tools see a real pyramid
        assert raw.level_count == 3  # 900 → 450 → 225 px wide
        assert float(raw.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
    slide = open_slide(path)
    np.testing.assert_array_equal(slide.levels[0].compute(), image)
    assert slide.mpp == pytest.approx((0.5, 0.5))
    assert slide.level_mpp(1) == pytest.approx((1.0, 1.0))


def test_dask_input_is_streamed_each_chunk_computed_once_per_level(tmp_path: Path) -> None:
    computed_chunks = []

    def tile(block: np.ndarray, block_info=None) -> np.ndarray:
        computed_chunks.append(block_info[None]["chunk-location"])
        return block

    lazy = da.from_array(gradient_rgb(600, 600), chunks=(256, 256, 3)).map_blocks(
        tile, dtype=np.uint8
    )
    write_pyramid_tiff(tmp_path / "lazy.tif", lazy, mpp=(1.0, 1.0))
    np.testing.assert_array_equal(
        open_slide(tmp_path / "lazy.tif").levels[0], gradient_rgb(600, 600)
    )
    # Streamed through Dask (never handed over as one array), a band of tile rows at a
    # time: 9 chunks, each computed once for level 0 and once for level 1.
    assert len(computed_chunks) == 2 * 9
    assert len(set(map(tuple, computed_chunks))) == 9


class CountingRows:
    """An array-like that counts the rows it is asked for (what a large level costs)."""

    def __init__(self, image: np.ndarray) -> None:
        self.image, self.shape, self.dtype, self.ndim = image, image.shape, image.dtype, image.ndim
        self.nbytes = image.nbytes
        self.rows = 0

    def __getitem__(self, key) -> np.ndarray:
        block = self.image[key]
        self.rows += block.shape[0]
        return block


def test_levels_too_large_for_memory_cost_one_pass_over_the_image_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import napari_mitosis.io.pyramid_tiff as pyramid_tiff

    monkeypatch.setattr(pyramid_tiff, "IN_MEMORY_LEVEL", 0)  # every reduced level stays lazy
    image = gradient_rgb(1024, 1280)
    source = CountingRows(image)
    path = write_pyramid_tiff(tmp_path / "big.tif", source, mpp=(0.5, 0.5), tile=64)
    slide = open_slide(path)
    assert len(slide.levels) == 6  # 1280 → 640 → 320 → 160 → 80 → 40 px wide
    expected = image.reshape(512, 2, 640, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(np.asarray(slide.levels[1]), expected, atol=0.5)
    # Level 0 and each of the 5 reduced levels read the image once (square chunks made
    # every 64 px tile of a reduced level recompute its whole chunk: 129 passes here).
    assert source.rows <= 6 * 1024


def test_labels_round_trip_exactly_and_open_as_labels(tmp_path: Path) -> None:
    labels = np.zeros((600, 800), np.uint16)
    labels[100:200, 100:300] = 7
    labels[400:500, 600:700] = 65000
    path = write_pyramid_tiff(tmp_path / "mask.tif", labels, mpp=(0.25, 0.25), layer_type="labels")
    slide = open_slide(path)
    assert slide.metadata.layer_type == "labels"
    assert slide.mpp == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), labels)


def test_writers_never_replace_a_file_unless_told(tmp_path: Path) -> None:
    path = tmp_path / "mine.tif"
    path.write_bytes(b"the user's precious file")
    with pytest.raises(OutputExistsError, match="already exists"):
        write_pyramid_tiff(path, gradient_rgb(64, 64))
    with pytest.raises(OutputExistsError):
        write_geojson(path, [])
    assert path.read_bytes() == b"the user's precious file"
    write_pyramid_tiff(path, gradient_rgb(64, 64), overwrite=True)
    np.testing.assert_array_equal(open_slide(path).levels[0], gradient_rgb(64, 64))


@pytest.mark.parametrize(
    ("umask", "file_mode", "folder_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)]
)
def test_outputs_get_the_permissions_the_users_umask_gives(
    tmp_path: Path, umask: int, file_mode: int, folder_mode: int
) -> None:
    """Readable by colleagues and other tools as any program's output is (not private
    temporary files renamed into place)."""
    before = os.umask(umask)
    try:
        write_pyramid_tiff(tmp_path / "p.tif", gradient_rgb(64, 64))
        write_geojson(tmp_path / "a.geojson", [])
        write_ome_zarr(tmp_path / "h.ome.zarr", np.zeros((8, 8), np.float32))
        card = ModelCard("small_cnn", {"outputs": 1, "width": 4}, task="classification")
        save_checkpoint(tmp_path / "m.safetensors", build_model(card), card)
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "m.safetensors").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "p.tif").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "a.geojson").stat().st_mode) == file_mode
    zarr_folder = tmp_path / "h.ome.zarr"
    assert stat.S_IMODE(zarr_folder.stat().st_mode) == folder_mode
    inside = [p for p in zarr_folder.rglob("*") if p.is_file()]
    assert inside and all(stat.S_IMODE(p.stat().st_mode) == file_mode for p in inside)


def test_a_cancelled_write_leaves_nothing_behind(tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def cancel_after_three(done: int, total: int) -> None:
        if done == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        write_pyramid_tiff(
            tmp_path / "big.tif", gradient_rgb(1024, 1024), progress=cancel_after_three
        )
    assert list(tmp_path.iterdir()) == []


def test_progress_counts_every_tile_of_every_level(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    write_pyramid_tiff(
        tmp_path / "p.tif", gradient_rgb(512, 512), progress=lambda d, t: seen.append((d, t))
    )
    # 512 px: 4 tiles, then 256 px: 1 tile.
    assert seen[-1] == (5, 5) and len(seen) == 5


def test_geojson_is_what_qupath_imports(tmp_path: Path) -> None:
    box = np.array([[10, 20], [10, 60], [40, 60], [40, 20]], float)  # (y, x)
    path = write_geojson(
        tmp_path / "mitoses.geojson",
        [
            Annotation(box, "rectangle", "Mitosis", {"score": 0.93}, "detection"),
            Annotation(np.array([[5.0, 7.0]]), "point", "Mitosis"),
        ],
    )
    content = json.loads(path.read_text())
    assert content["type"] == "FeatureCollection"
    rect, point = content["features"]
    assert rect["geometry"]["type"] == "Polygon"
    assert rect["geometry"]["coordinates"][0][0] == [20.0, 10.0]  # GeoJSON is (x, y)
    assert rect["geometry"]["coordinates"][0][-1] == rect["geometry"]["coordinates"][0][0]
    assert rect["properties"]["objectType"] == "detection"
    assert rect["properties"]["classification"]["name"] == "Mitosis"
    assert rect["properties"]["measurements"] == {"score": 0.93}
    assert point["geometry"] == {"type": "Point", "coordinates": [7.0, 5.0]}


def test_geojson_round_trip_keeps_every_shape(tmp_path: Path) -> None:
    shapes = [
        Annotation(np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float), "rectangle", "Tumour"),
        Annotation(np.array([[1, 1], [5, 9], [9, 2]], float), "polygon", None, {"area": 3.5}),
        Annotation(np.array([[0, 0], [3, 4], [8, 8]], float), "path", "Nerve"),
        Annotation(np.array([[2.5, 3.5]]), "point", "Mitosis", {"score": 0.5}, "detection"),
    ]
    back = read_geojson(write_geojson(tmp_path / "all.geojson", shapes))
    assert [a.shape_type for a in back] == ["polygon", "polygon", "path", "point"]
    for original, copy in zip(shapes, back, strict=True):
        np.testing.assert_allclose(copy.coords, original.coords)
        assert copy.classification == original.classification
        assert copy.measurements == original.measurements
        assert copy.object_type == original.object_type


def test_ellipses_become_polygons_inside_their_box(tmp_path: Path) -> None:
    corners = np.array([[0, 0], [0, 20], [10, 20], [10, 0]], float)
    (back,) = read_geojson(write_geojson(tmp_path / "e.geojson", [Annotation(corners, "ellipse")]))
    assert len(back.coords) == 64
    assert back.coords[:, 0].min() >= -1e-9 and back.coords[:, 0].max() <= 10 + 1e-9
    assert back.coords[:, 1].min() >= -1e-9 and back.coords[:, 1].max() <= 20 + 1e-9


def test_malformed_geojson_is_reported_with_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.geojson"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.geojson: not valid JSON"):
        read_geojson(bad)
    odd = tmp_path / "odd.geojson"
    odd.write_text(json.dumps({"type": "Feature", "geometry": {"type": "Torus"}, "properties": {}}))
    with pytest.raises(ValueError, match=r"odd\.geojson: feature 0 .*Torus"):
        read_geojson(odd)
