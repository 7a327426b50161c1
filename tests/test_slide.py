"""Given a slide file, when I open it, I get lazy levels in µm with its metadata."""

from __future__ import annotations

import io
import pickle
import shutil
from dataclasses import replace
from pathlib import Path

import dask.array as da
import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from conftest import gradient_rgb
from napari_mitosis import CorruptSlideError, SlideNotFoundError, UnsupportedFormatError, open_slide


def test_pyramid_opens_as_lazy_tile_aligned_levels_in_micrometres(pyramid_path: Path) -> None:
    slide = open_slide(pyramid_path)
    assert slide.metadata.vendor == "generic-tiff"
    assert slide.mpp == pytest.approx((0.5, 0.5))
    assert [lv.shape for lv in slide.levels] == [(1000, 1500, 3), (500, 750, 3), (250, 375, 3)]
    assert all(isinstance(lv, da.Array) and lv.dtype == np.uint8 for lv in slide.levels)
    assert slide.levels[0].chunksize == (256, 256, 3)
    assert slide.level_mpp(2) == pytest.approx((2.0, 2.0))
    assert slide.metadata.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    assert slide.units() == ("micrometer", "micrometer")


def test_pixels_match_what_was_written_at_every_level(pyramid_path: Path) -> None:
    slide = open_slide(pyramid_path)
    truth = gradient_rgb(1000, 1500)
    for level in range(3):
        expected = truth[:: 2**level, :: 2**level]
        # A region that straddles tiles and the ragged right/bottom edges.
        h, w = expected.shape[:2]
        got = slide.read_region(level, h - 300, w - 280, 300, 280)
        np.testing.assert_array_equal(got, expected[h - 300 :, w - 280 :])


def test_opening_reads_no_pixels_and_one_tile_costs_one_read(pyramid_path, count_reads) -> None:
    slide = open_slide(pyramid_path)
    assert count_reads == []
    slide.levels[0][256:512, 512:768].compute()
    assert count_reads == [(0, (256, 256))]
    count_reads.clear()
    slide.levels[1][0:500, 0:512].compute()  # four tiles of level 1 (500 px tall)
    assert sorted(count_reads) == [(1, (256, 244))] * 2 + [(1, (256, 256))] * 2


def test_real_aperio_slide_metadata_and_pixels_match_openslide(cmu_small: Path) -> None:
    slide = open_slide(cmu_small)
    meta = slide.metadata
    assert meta.vendor == "aperio"
    assert slide.mpp == pytest.approx((0.499, 0.499))
    assert meta.objective_power == 20
    assert meta.level_dimensions == ((2220, 2967),)
    assert meta.tile_sizes == ((240, 240),)
    assert set(meta.associated_images) == {"label", "macro", "thumbnail"}
    # A single native level taller than a screen gets a derived ×2 level for display.
    assert len(slide.levels) == 2 and slide.levels[1].shape == (1483, 1110, 3)
    assert slide.levels[0].chunksize == (240, 240, 3)
    raw = np.asarray(openslide.OpenSlide(str(cmu_small)).read_region((480, 720), 0, (240, 240)))
    np.testing.assert_array_equal(slide.read_region(0, 720, 480, 240, 240), raw[..., :3])
    label = slide.associated_image("label")
    assert label.shape == (463, 387, 3)
    with pytest.raises(KeyError, match="no associated image"):
        slide.associated_image("barcode")


def test_derived_level_is_the_mean_of_2x2_blocks(cmu_small: Path) -> None:
    slide = open_slide(cmu_small)
    fine = slide.read_region(0, 0, 0, 480, 480).astype(float)
    coarse = slide.read_region(1, 0, 0, 240, 240).astype(float)
    expected = fine.reshape(240, 2, 240, 2, 3).mean(axis=(1, 3))
    assert np.abs(coarse - expected).max() <= 0.5 + 1e-9


def test_transparent_pixels_are_composited_on_the_background(pyramid_path: Path) -> None:
    slide = open_slide(pyramid_path)
    handle = slide._closer
    # Beyond the right edge OpenSlide returns transparent pixels: they must become white,
    # not black, like the glass of a slide.
    rgb = handle.read_rgb(0, 1500 - 100, 0, 200, 10)
    assert (rgb[:, 100:] == 255).all()
    np.testing.assert_array_equal(rgb[:, :100], gradient_rgb(10, 1500)[:, 1400:])


def test_levels_survive_pickling_for_dask_workers(pyramid_path: Path) -> None:
    slide = open_slide(pyramid_path)
    level = pickle.loads(pickle.dumps(slide.levels[1]))
    np.testing.assert_array_equal(level[:300, :300].compute(), slide.read_region(1, 0, 0, 300, 300))


def test_srgb_mode_applies_the_embedded_icc_profile(tmp_path: Path, monkeypatch) -> None:
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = tmp_path / "icc.tif"
    image = gradient_rgb(512, 512)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            image,
            tile=(256, 256),
            photometric="rgb",
            extratags=[(34675, 7, len(profile), profile, True)],
        )
    applied = []
    original = ImageCms.applyTransform
    monkeypatch.setattr(
        ImageCms, "applyTransform", lambda *a, **k: applied.append(1) or original(*a, **k)
    )
    raw = open_slide(path)
    assert raw.metadata.color == "raw" and raw.metadata.color_profile
    np.testing.assert_array_equal(raw.read_region(0, 0, 0, 64, 64), image[:64, :64])
    assert applied == []
    srgb = open_slide(path, color="srgb")
    assert srgb.metadata.color == "srgb"
    converted = srgb.read_region(0, 0, 0, 64, 64)
    assert applied  # the transform ran on the tile
    assert np.abs(converted.astype(int) - image[:64, :64]).max() <= 2  # sRGB → sRGB


def test_srgb_without_a_profile_warns_and_stays_raw(pyramid_path: Path) -> None:
    with pytest.warns(UserWarning, match="no ICC profile"):
        slide = open_slide(pyramid_path, color="srgb")
    assert slide.metadata.color == "raw"


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "error", "reason"),
    [
        ("missing.svs", None, SlideNotFoundError, "no such file"),
        ("notes.txt", b"hello", UnsupportedFormatError, "unsupported extension"),
        ("garbage.svs", b"not a slide at all" * 100, UnsupportedFormatError, "does not recognise"),
        ("half.png", _png_bytes()[:3000], CorruptSlideError, "truncated or damaged"),
    ],
)
def test_bad_input_names_the_file_and_the_problem(tmp_path, name, content, error, reason) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=reason) as info:
        open_slide(path)
    assert str(path) in str(info.value)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "slides.svs"
    folder.mkdir()
    with pytest.raises(SlideNotFoundError, match="is a directory"):
        open_slide(folder)


def test_truncated_real_slide_is_reported_as_damaged(cmu_small: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "CMU-truncated.svs"
    truncated.write_bytes(cmu_small.read_bytes()[: cmu_small.stat().st_size // 2])
    with pytest.raises(CorruptSlideError, match="truncated or damaged") as info:
        open_slide(truncated)
    assert str(truncated) in str(info.value)


def test_a_damaged_tile_raises_instead_of_reading_blank(tmp_path: Path) -> None:
    path = tmp_path / "damaged.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(
        path,
        rng.integers(0, 255, (512, 512, 3), np.uint8),
        tile=(256, 256),
        photometric="rgb",
        compression="jpeg",
    )
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages.first.dataoffsets[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + 400] = b"\xff" * 400  # wreck the last tile's JPEG stream
    path.write_bytes(bytes(data))
    slide = open_slide(path)
    slide.read_region(0, 0, 0, 256, 256)  # an intact tile still reads
    with pytest.raises(CorruptSlideError, match=r"damaged\.tif.*failed"):
        slide.read_region(0, 256, 256, 256, 256)


def test_plain_images_open_with_the_right_shape_and_units(tmp_path: Path) -> None:
    rgb = gradient_rgb(120, 90)
    Image.fromarray(rgb).save(tmp_path / "hpf.png")
    Image.fromarray(rgb).save(tmp_path / "hpf.bmp")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "frame.png")  # greyscale ultrasound frame
    Image.fromarray(rgb).save(tmp_path / "hpf.jpg", quality=95)
    for name in ("hpf.png", "hpf.bmp"):
        slide = open_slide(tmp_path / name)
        np.testing.assert_array_equal(slide.levels[0], rgb)
        assert slide.mpp is None and slide.units() == ("pixel", "pixel")
        assert not slide.multiscale and slide.rgb
    grey = open_slide(tmp_path / "frame.png")
    assert grey.levels[0].shape == (120, 90) and not grey.rgb
    jpeg = open_slide(tmp_path / "hpf.jpg")
    assert jpeg.levels[0].shape == (120, 90, 3)
    assert np.abs(jpeg.levels[0].astype(int) - rgb).mean() < 4


def test_rgba_png_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :5, 3] = 255  # left half opaque red-ish, right half fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    pixels = open_slide(tmp_path / "alpha.png").levels[0]
    assert pixels.shape == (10, 10, 3)
    np.testing.assert_array_equal(pixels[0, 0], [200, 0, 0])
    np.testing.assert_array_equal(pixels[0, 9], [255, 255, 255])


def test_strip_tiff_with_resolution_tags_gets_micrometres(tmp_path: Path) -> None:
    path = tmp_path / "hpf.tif"
    data = (np.arange(200 * 300) % 65535).astype(np.uint16).reshape(200, 300)
    tifffile.imwrite(path, data, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    slide = open_slide(path)
    assert slide.mpp == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(slide.levels[0], data)


def test_screen_dpi_is_not_mistaken_for_a_scan_resolution(tmp_path: Path) -> None:
    path = tmp_path / "screen.tif"
    tifffile.imwrite(path, gradient_rgb(20, 20), resolution=(72, 72), resolutionunit="INCH")
    assert open_slide(path).mpp is None


def test_other_openslide_extensions_are_recognised(cmu_small: Path, tmp_path: Path) -> None:
    # The suffix does not decide: OpenSlide's own format detection does.
    copy = tmp_path / "CMU-1-Small-Region.SVS"
    shutil.copy(cmu_small, copy)
    assert open_slide(copy).metadata.vendor == "aperio"


def test_sources_read_big_regions_in_few_parallel_calls(pyramid_path, count_reads) -> None:
    slide = open_slide(pyramid_path)
    view = slide.sources[0]
    assert not isinstance(view, da.Array) and view.shape == (1000, 1500, 3)
    truth = gradient_rgb(1000, 1500)
    np.testing.assert_array_equal(view[100:900, 50:1400], truth[100:900, 50:1400])
    # 4 tile rows × 6 tile columns, read as at most one band per worker thread.
    assert 1 <= len(count_reads) <= slide._closer.workers
    np.testing.assert_array_equal(view[::4, 7:300:3], truth[::4, 7:300:3])
    np.testing.assert_array_equal(np.asarray(slide.sources[2]), truth[::4, ::4])
    assert view[5:5, :].shape == (0, 1500, 3)


def test_our_tile_decoding_gives_openslides_own_pixels(pyramid_path: Path, cmu_small: Path) -> None:
    """Plain TIFF tiles (generic pyramid, lossless; Aperio SVS, JPEG) are decoded by us, and
    every region — unaligned, across tiles, at the edges, at every level — equals
    OpenSlide's read_region."""
    rng = np.random.default_rng(0)
    for path in (pyramid_path, cmu_small):
        slide = open_slide(path)
        handle = slide._closer
        raw = openslide.OpenSlide(str(path))
        for level, (width, height) in enumerate(raw.level_dimensions):
            assert handle.tiles(level) is not None  # not OpenSlide's painting
            down = raw.level_downsamples[level]
            for _ in range(6):
                w, h = int(rng.integers(1, min(400, width))), int(rng.integers(1, min(400, height)))
                x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
                expected = np.asarray(
                    raw.read_region((round(x * down), round(y * down)), level, (w, h))
                )
                got = slide.sources[level][y : y + h, x : x + w]
                np.testing.assert_array_equal(got, expected[..., :3])
            corner = slide.sources[level][height - 5 :, width - 7 :]
            expected = np.asarray(
                raw.read_region(
                    (round((width - 7) * down), round((height - 5) * down)), level, (7, 5)
                )
            )
            np.testing.assert_array_equal(corner, expected[..., :3])


def test_decoded_tiles_are_cached_within_a_bound(pyramid_path: Path, monkeypatch) -> None:
    import napari_mitosis.io.tiff_tiles as tiff_tiles

    monkeypatch.setattr(tiff_tiles, "CACHE_BYTES", 3 * 256 * 256 * 3)  # three tiles
    slide = open_slide(pyramid_path)
    tiles = slide._closer.tiles(0)
    decoded = []
    original = tiles.levels[0].decode
    monkeypatch.setattr(
        tiles,
        "levels",
        {
            0: replace(
                tiles.levels[0], decode=lambda *a, **k: decoded.append(1) or original(*a, **k)
            )
        },
    )
    view = slide.sources[0]
    view[10:20, 10:20]
    view[30:40, 100:200]  # the same tile: no second decode
    assert len(decoded) == 1
    np.testing.assert_array_equal(view[:, :], gradient_rgb(1000, 1500))  # 24 tiles
    assert tiles._cached_bytes <= 3 * 256 * 256 * 3


def test_threads_wanting_one_tile_decode_it_once(pyramid_path: Path, monkeypatch) -> None:
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    slide = open_slide(pyramid_path)
    tiles = slide._closer.tiles(0)
    decoded = []
    original = tiles.levels[0].decode
    lock = threading.Lock()

    def slow_decode(*args, **kwargs):  # type: ignore[no-untyped-def]
        with lock:
            decoded.append(args[1])
        time.sleep(0.05)  # every thread arrives while the first still decodes
        return original(*args, **kwargs)

    monkeypatch.setattr(tiles, "levels", {0: replace(tiles.levels[0], decode=slow_decode)})
    view = slide.sources[0]
    with ThreadPoolExecutor(6) as pool:
        patches = list(pool.map(lambda x: view[10:100, x : x + 90], range(0, 120, 20)))
    assert decoded == [0]  # six patches of tile 0, one decode
    for x, patch in zip(range(0, 120, 20), patches, strict=True):
        np.testing.assert_array_equal(patch, gradient_rgb(1000, 1500)[10:100, x : x + 90])


def test_a_tile_the_scanner_never_wrote_reads_as_background(
    pyramid_path: Path, monkeypatch
) -> None:
    """Sparse scans leave tiles out (byte count 0); OpenSlide shows them as background."""
    slide = open_slide(pyramid_path)
    tiles = slide._closer.tiles(0)
    page = tiles.levels[0]
    sparse = replace(page, byte_counts=(0, *page.byte_counts[1:]))
    monkeypatch.setattr(tiles, "levels", {0: sparse})
    view = slide.sources[0]
    np.testing.assert_array_equal(view[:256, :256], np.full((256, 256, 3), 255, np.uint8))
    np.testing.assert_array_equal(view[:256, 256:512], gradient_rgb(1000, 1500)[:256, 256:512])


@pytest.mark.parametrize(
    "key",
    [
        (slice(0, 256), slice(0, 256)),  # one whole tile
        (slice(100, 700), slice(37, 1000)),  # unaligned, many tiles
        (slice(-300, None), slice(None, 90)),  # negative and open ends
        (Ellipsis, slice(0, 2)),  # channels through an ellipsis
        (slice(5, 6), slice(7, 8), slice(1, 2)),  # one pixel, one channel
        (slice(0, 512, 2), slice(0, 512)),  # a step: Dask's own slicing
        (3, slice(0, 100)),  # an integer: Dask's own slicing
        (slice(600, 100), slice(0, 10)),  # empty
    ],
)
def test_layer_reads_equal_dask_slicing_with_the_same_chunks(pyramid_path, key) -> None:
    """The direct read path of a level gives exactly what Dask's own slicing gives."""
    import pickle

    import dask.array as da

    slide = open_slide(pyramid_path)
    level = slide.levels[0]
    theirs = da.Array.__getitem__(level, key)
    expected = theirs.compute()
    np.testing.assert_array_equal(np.asarray(level[key]), expected)  # napari's read
    ours = level[key]
    assert isinstance(ours, da.Array) and ours.chunks == theirs.chunks
    assert (ours.shape, ours.dtype) == (theirs.shape, theirs.dtype)
    np.testing.assert_array_equal(ours.compute(), expected)
    np.testing.assert_array_equal((ours // 2).compute(), expected // 2)  # Dask ops on it
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(level[key])).compute(), expected)
    np.testing.assert_array_equal(expected, np.asarray(slide.sources[0])[key])


def test_napari_style_reads_go_straight_to_the_source(pyramid_path, count_reads) -> None:
    """``np.asarray(level[slices])`` (what napari does) skips Dask's scheduler: one source
    read (split into bands of tile rows only when large), where ``compute`` reads a chunk
    at a time."""
    slide = open_slide(pyramid_path)
    region = slide.levels[0][200:900, 300:1100]
    assert region.npartitions == 16
    np.asarray(region)
    direct = len(count_reads)
    count_reads.clear()
    region.compute()
    assert direct == 1 and len(count_reads) == 16


def test_a_dicom_wsi_opens_from_any_file_of_its_series_or_its_folder(
    dicom_series, pyramid_path
) -> None:
    """DICOM WSI (one instance per level) through OpenSlide: levels and µm/px from the
    DICOM, pixels as OpenSlide reads them and close to the slide it was made from."""
    import openslide

    files = sorted(dicom_series.glob("*.dcm"))
    assert len(files) == 3
    source = open_slide(pyramid_path)
    for path in (dicom_series, files[-1]):
        with open_slide(path) as slide:
            assert slide.metadata.vendor == "dicom"
            assert slide.mpp == pytest.approx((0.5, 0.5))
            assert slide.metadata.level_dimensions == ((1500, 1000), (750, 500), (375, 250))
            for level in range(3):
                ours = np.asarray(slide.levels[level][40:240, 100:360])
                down = round(slide.metadata.level_downsamples[level])
                reference = openslide.OpenSlide(str(files[0])).read_region(
                    (100 * down, 40 * down), level, (260, 200)
                )
                np.testing.assert_array_equal(ours, np.asarray(reference)[..., :3])
                original = np.asarray(source.levels[level][40:240, 100:360]).astype(int)
                assert np.abs(ours.astype(int) - original).mean() < 8  # JPEG-encoded frames


def test_a_folder_without_dicom_files_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideNotFoundError, match=f"{tmp_path}: is a directory without DICOM"):
        open_slide(tmp_path)
