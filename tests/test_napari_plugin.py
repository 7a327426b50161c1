"""Given napari, when a user opens slides, samples and saves layers through the plugin,
they see µm-scaled multiscale layers, only visible tiles are read, and files come out right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_mitosis._napari.reader import get_reader

PLUGIN = "napari-mitosis"


def test_reader_declines_paths_it_does_not_handle(tmp_path: Path) -> None:
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path)) is None  # a folder
    assert get_reader([]) is None
    assert get_reader(str(tmp_path / "slide.svs")) is not None
    assert get_reader(str(tmp_path / "ANNOTATIONS.GEOJSON")) is not None


def test_real_slide_opens_as_one_multiscale_rgb_layer_in_micrometres(
    make_napari_viewer, cmu_small
) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open(cmu_small, plugin=PLUGIN)
    assert len(layers) == 1 and len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.multiscale and layer.rgb
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499))
    assert [str(u) for u in layer.units] == ["micrometer", "micrometer"]
    assert layer.metadata["vendor"] == "aperio"
    assert layer.metadata["objective_power"] == 20
    assert layer.metadata["level_dimensions"] == ((2220, 2967),)
    assert layer.metadata["properties"]["aperio.AppMag"] == "20"
    # Layer extent is the slide's physical size: 2220 px × 0.499 µm wide.
    extent = layer.extent.world
    assert extent[1][1] - extent[0][1] == pytest.approx(2220 * 0.499, rel=1e-3)


def test_every_layer_level_is_a_dask_array_a_worker_can_compute(
    make_napari_viewer, cmu_small, pyramid_path
) -> None:
    """Scripts do `layer.data[0].map_blocks(...)`, `dask.compute` or send a level to a
    distributed worker: every level, the finest included, is a real Dask array."""
    import pickle

    import dask
    import dask.array as da

    from napari_mitosis import open_slide

    viewer = make_napari_viewer()
    for path in (cmu_small, pyramid_path):
        layer = viewer.open(path, plugin=PLUGIN)[0]
        assert all(isinstance(level, da.Array) for level in layer.data)
        finest = layer.data[0]
        assert finest.chunksize[:2] == open_slide(path).sources[0].tile  # the slide's tiles
        truth = np.asarray(open_slide(path).sources[0][100:612, 50:818])
        halved = finest.map_blocks(lambda block: block // 2, dtype=np.uint8)
        (got,) = dask.compute(halved[100:612, 50:818], scheduler="processes", num_workers=1)
        np.testing.assert_array_equal(got, truth // 2)  # computed in another process
        unpickled = pickle.loads(pickle.dumps(finest))
        np.testing.assert_array_equal(np.asarray(unpickled[100:612, 50:818]), truth)


def test_panning_and_zooming_reads_only_tiles_on_screen(
    make_napari_viewer, qtbot, pyramid_path, count_reads
) -> None:
    viewer = make_napari_viewer(show=True)  # a shown canvas is what drives tile loading
    viewer.window.resize(800, 600)
    viewer.open(pyramid_path, plugin=PLUGIN)
    layer = viewer.layers[0]
    viewer.reset_view()
    qtbot.waitUntil(lambda: len(count_reads) > 0, timeout=5000)
    qtbot.wait(300)
    # Zoomed out on a 1500 px wide slide: napari shows a coarse level, never level 0.
    assert count_reads and all(level > 0 for level, _ in count_reads)
    count_reads.clear()
    # Zoom into a small patch at full resolution: only level-0 tiles around it are read.
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera  # napari < 0.9
    camera.center = (100 * 0.5, 100 * 0.5)
    camera.zoom = 8 / 0.5
    qtbot.waitUntil(lambda: any(level == 0 for level, _ in count_reads), timeout=5000)
    qtbot.wait(300)
    level0 = [c for c in count_reads if c[0] == 0]
    total_level0_tiles = 4 * 6
    assert 0 < len(level0) <= 4 < total_level0_tiles
    assert layer.data_level == 0


def test_sample_slide_has_mitoses_where_the_points_are(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic-slide")
    image, points = viewer.layers
    assert image.multiscale and image.rgb and points.ndim == 2
    assert len(points.data) == 12
    assert np.allclose(points.scale, image.scale)
    level0 = image.data[0]
    for y, x in points.data.astype(int):
        patch = np.asarray(level0[y - 3 : y + 4, x - 3 : x + 4])
        assert patch.mean() < 110  # mitotic figures are the darkest things on the slide
    assert list(points.features["classification"]) == ["Mitosis"] * 12


def test_shapes_drawn_over_a_slide_save_as_level0_geojson(
    make_napari_viewer, tmp_path, pyramid_path
) -> None:
    viewer = make_napari_viewer()
    viewer.open(pyramid_path, plugin=PLUGIN)
    mpp = 0.5
    # A rectangle drawn in world (µm) coordinates, on a layer with the slide's scale as
    # napari gives new layers: its data are then level-0 pixels.
    shapes = viewer.add_shapes(
        [np.array([[100, 200], [100, 400], [300, 400], [300, 200]], float)],
        shape_type="rectangle",
        scale=(mpp, mpp),
        features={"classification": ["Tumour"]},
    )
    out = tmp_path / "tumour.geojson"
    shapes.save(str(out), plugin=PLUGIN)
    feature = json.loads(out.read_text())["features"][0]
    ring = np.array(feature["geometry"]["coordinates"][0])
    assert ring[:, 0].min() == 200 and ring[:, 0].max() == 400  # x in level-0 px
    assert ring[:, 1].min() == 100 and ring[:, 1].max() == 300  # y
    assert feature["properties"]["classification"]["name"] == "Tumour"
    # Reading it back gives the same rectangle on the slide.
    (back,) = viewer.open(out, plugin=PLUGIN)
    assert back.data[0][:, 0].min() == 100 and back.data[0][:, 1].max() == 400


def test_napari_writer_refuses_to_overwrite(make_napari_viewer, tmp_path) -> None:
    viewer = make_napari_viewer()
    points = viewer.add_points([[1.0, 2.0]])
    out = tmp_path / "points.geojson"
    out.write_text("keep me")
    with pytest.raises(Exception, match="already exists"):
        points.save(str(out), plugin=PLUGIN)
    assert out.read_text() == "keep me"


def test_image_and_labels_layers_save_as_pyramidal_tiff(make_napari_viewer, tmp_path) -> None:
    from napari_mitosis import open_slide

    viewer = make_napari_viewer()
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8)
    image = viewer.add_image(rgb, scale=(0.25, 0.25), units=("micrometer", "micrometer"))
    labels = viewer.add_labels((rgb[..., 0] > 128).astype(np.uint8) * 3, scale=(0.25, 0.25))
    image.save(str(tmp_path / "image.tif"), plugin=PLUGIN)
    labels.save(str(tmp_path / "labels.tif"), plugin=PLUGIN)
    saved = open_slide(tmp_path / "image.tif")
    assert saved.mpp == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(saved.levels[0], rgb)
    (back,) = viewer.open(tmp_path / "labels.tif", plugin=PLUGIN)
    assert back._type_string == "labels"
    np.testing.assert_array_equal(np.asarray(back.data), labels.data)


def test_heatmap_ome_zarr_opens_as_layers_on_the_slide(make_napari_viewer, tmp_path: Path) -> None:
    from napari_mitosis._napari.reader import get_reader
    from napari_mitosis.io.ome_zarr import write_ome_zarr

    heat = np.random.default_rng(0).random((40, 60)).astype(np.float32)
    mask = (heat > 0.5).astype(np.uint8)
    path = write_ome_zarr(
        tmp_path / "slide.tumour.ome.zarr",
        heat,
        mpp0=(0.5, 0.5),
        cell_level0=32.0,
        labels={"tumour_mask": mask},
        extra={"threshold": 0.5},
    )
    viewer = make_napari_viewer()
    image, labels = viewer.open(str(path), plugin="napari-mitosis")
    assert image.name == "slide.tumour probability" and labels.name == "slide.tumour tumour_mask"
    # Cell (0, 0) covers level-0 px 0–32: 16 µm wide, centred at 15.5 px = 7.75 µm.
    np.testing.assert_allclose(image.scale, (16.0, 16.0))
    np.testing.assert_allclose(image.translate, (7.75, 7.75))
    np.testing.assert_array_equal(np.asarray(labels.data), mask)
    # A heatmap of a slide region whose last cells reach past the slide's edge (at 1000 ×
    # 1900 level-0 px) is drawn at the slide's pixel size and ends at the edge.
    clipped = write_ome_zarr(
        tmp_path / "edge.tumour.ome.zarr",
        heat,
        mpp0=(0.5, 0.5),
        cell_level0=32.0,
        labels={"tumour_mask": mask},
        extra={
            "origin_level0_yx": [0.0, 0.0],
            "cell_level0_px": 32.0,
            "end_level0_yx": [1000, 1900],
        },
    )
    image, labels = viewer.open(str(clipped), plugin="napari-mitosis")
    np.testing.assert_allclose(image.scale, (0.5, 0.5))
    assert image.data[0].shape == labels.data[0].shape == (1000, 1900)
    # pixel centres from the first to the last slide pixel, as for the slide's own layer
    np.testing.assert_allclose(
        image.extent.world[1] - image.extent.world[0], (999 * 0.5, 1899 * 0.5)
    )
    np.testing.assert_array_equal(np.asarray(labels.data[0][::32, ::32]), mask[:32, :60])
    # OME-Zarr that is not ours is left to napari-ome-zarr.
    write_ome_zarr(tmp_path / "foreign.ome.zarr", heat)
    attrs = tmp_path / "foreign.ome.zarr" / ".zattrs"
    attrs.write_text(attrs.read_text().replace('"napari_mitosis"', '"other"'))
    assert get_reader(str(tmp_path / "foreign.ome.zarr")) is None
