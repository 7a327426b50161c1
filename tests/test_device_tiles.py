"""Patches decoded and assembled on the model's device (the GPU path's own code, run here
on the CPU through torchvision's CPU `decode_jpeg`, and under CUDA when present): Aperio's
abbreviated RGB JPEG tiles and YCbCr pyramids decode to the CPU decoder's pixels (±2),
patches across tile borders and past the level's edge equal the CPU reads, resizing is the
CPU engines' own, and non-JPEG tiles fall back to the CPU decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_mitosis.engine.device_tiles import DeviceTileReader, decode_jpeg_streams
from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
from napari_mitosis.io.tiff_tiles import TiffTiles

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
WHITE = np.array([255, 255, 255], np.uint8)


def tiles_of(path: Path) -> TiffTiles:
    import openslide

    with openslide.OpenSlide(str(path)) as slide:
        vendor = slide.properties.get("openslide.vendor", "generic-tiff")
        dimensions = list(slide.level_dimensions)
    opened = TiffTiles.open(path, vendor, dimensions)
    assert opened is not None
    return opened


@pytest.fixture(scope="module")
def slides(cmu_small: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, TiffTiles]:
    from napari_mitosis.samples.synthetic import synthetic_slide

    folder = tmp_path_factory.mktemp("device-tiles")
    rgb, _ = synthetic_slide(700, 900, seed=3)
    ycbcr = write_pyramid_tiff(folder / "jpeg.tif", rgb, mpp=(0.25, 0.25), compression="jpeg")
    deflate = write_pyramid_tiff(folder / "zlib.tif", rgb, mpp=(0.25, 0.25), compression="zlib")
    opened = {"aperio": tiles_of(cmu_small), "ycbcr": tiles_of(ycbcr), "deflate": tiles_of(deflate)}
    yield opened
    for tiles in opened.values():
        tiles.close()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["aperio", "ycbcr"])
def test_jpeg_tiles_decode_on_the_device_as_on_the_cpu(slides, kind: str, device: str) -> None:
    tiles = slides[kind]
    for level, page in tiles.levels.items():
        indices = [i for i, n in enumerate(page.byte_counts) if n][:40]
        streams = [tiles.jpeg_stream(level, i) for i in indices]
        decoded = decode_jpeg_streams(streams, device)
        for index, tile in zip(indices, decoded, strict=True):
            cpu = tiles.tile(level, index, WHITE).astype(int)
            ours = tile.permute(1, 2, 0).cpu().numpy().astype(int)
            assert ours.shape == cpu.shape
            assert np.abs(ours - cpu).max() <= 2, (kind, level, index)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["aperio", "ycbcr", "deflate"])
def test_patches_across_tile_borders_and_edges_equal_the_cpu_reads(
    slides, kind: str, device: str
) -> None:
    tiles = slides[kind]
    reader = DeviceTileReader(tiles, 0, device)
    page = tiles.levels[0]
    size = (299, 299)
    origins = np.array(
        [[0, 0], [page.tile_height - 100, page.tile_width - 50], [37, 211],
         [page.height - 150, page.width - 120], [-40, -60]]  # the last two leave the level
    )  # fmt: skip
    batch = reader.patches(origins, size)
    assert batch.shape == (len(origins), 3, *size) and batch.device.type == device
    for (y, x), patch in zip(origins, batch, strict=True):
        expected = np.empty((*size, 3), np.uint8)
        expected[:] = WHITE
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + size[0], page.height), min(x + size[1], page.width)
        expected[y0 - y : y1 - y, x0 - x : x1 - x] = tiles.read(0, y0, y1, x0, x1, WHITE)
        ours = patch.permute(1, 2, 0).cpu().numpy().astype(int)
        tolerance = 0 if device == "cpu" or kind == "deflate" else 2
        assert np.abs(ours - expected.astype(int)).max() <= tolerance, (kind, y, x)
    if kind == "deflate":
        assert reader.decoded_on_device == 0  # not JPEG: the CPU decoder, moved over
    else:
        assert reader.decoded_on_device > 0
    resized = reader.patches(origins[:2], size, out_size=(224, 224))
    cpu = F.interpolate(
        batch[:2].cpu().float(), size=(224, 224), mode="bilinear", antialias=True
    ).round()
    assert torch.equal(resized.cpu().float(), cpu.clamp(0, 255))


def test_a_level_our_decoder_does_not_read_is_refused(slides) -> None:
    tiles = slides["aperio"]
    missing = max(tiles.levels) + 5
    with pytest.raises(ValueError, match=f"level {missing} is not one our decoder reads"):
        DeviceTileReader(tiles, missing)


def test_a_heatmap_from_device_tiles_equals_the_cpu_heatmap(cmu_small: Path, tmp_path) -> None:
    """The whole classifier run fed from `DeviceTileReader` (here libjpeg-turbo through
    torchvision; nvJPEG on a GPU) gives the CPU path's heatmap within 1e-4 (float32)."""
    from napari_mitosis.classification.predictor import ClassifierPredictor
    from napari_mitosis.classification.run import ClassificationRun, classify_slide
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.models.card import ModelCard, build_model

    torch.manual_seed(0)
    card = ModelCard(
        "small_cnn", {"outputs": 1, "width": 8}, task="classification", input_size=48, mpp=0.6
    )
    predictor = ClassifierPredictor(build_model(card), card, "cpu")
    options = {"tissue_only": False, "device": "cpu"}
    cpu = classify_slide(cmu_small, predictor, **options)
    ours = classify_slide(cmu_small, predictor, device_tiles=True, **options)
    assert cpu.heatmap.shape == ours.heatmap.shape
    np.testing.assert_allclose(np.asarray(ours.heatmap), np.asarray(cpu.heatmap), atol=1e-4)
    slide = open_slide(cmu_small)
    run = ClassificationRun(slide.sources[0], predictor, device_tiles=True)
    assert run.read_batch is not None  # the device path was taken, not the CPU reads
    wsinfer_like = ModelCard("small_cnn", {"outputs": 1, "width": 8}, task="classification",
                             input_size=48, mpp=0.6, resize="pil-bilinear")  # fmt: skip
    pil = ClassifierPredictor(build_model(wsinfer_like), wsinfer_like, "cpu")
    assert ClassificationRun(slide.sources[0], pil, device_tiles=True).read_batch is None


def test_unet_and_detector_runs_from_device_tiles_equal_the_cpu_runs(
    cmu_small: Path, trained_unet, trained_detector
) -> None:
    """The U-Net's blended probability map and the detector's boxes from device tiles
    equal the CPU reads' (float32 on the CPU; ±2 decode differences under CUDA)."""
    from napari_mitosis.detection.run import DetectionRun, detect_slide
    from napari_mitosis.engine.tiled_inference import TilePredictor
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.models.checkpoint import load_checkpoint
    from napari_mitosis.models.detector import DetectionPredictor
    from napari_mitosis.segmentation.run import SegmentationRun, segment_slide

    region = (300, 500, 812, 1268)  # level-0 px, across JPEG tile borders
    options = {"region": region, "device": "cpu", "overlap": 32}
    cpu = segment_slide(cmu_small, trained_unet[0], **options)
    ours = segment_slide(cmu_small, trained_unet[0], device_tiles=True, **options)
    np.testing.assert_allclose(np.asarray(ours.probability), np.asarray(cpu.probability), atol=1e-4)
    found_cpu = detect_slide(cmu_small, trained_detector[0], **options)
    found = detect_slide(cmu_small, trained_detector[0], device_tiles=True, **options)
    assert len(found.detections) == len(found_cpu.detections)
    np.testing.assert_allclose(found.detections.boxes, found_cpu.detections.boxes, atol=1e-2)
    np.testing.assert_allclose(found.detections.scores, found_cpu.detections.scores, atol=1e-4)
    # the device path was the one taken
    source = open_slide(cmu_small).sources[0]
    unet = TilePredictor(*load_checkpoint(trained_unet[0], task="segmentation"), "cpu")
    assert SegmentationRun(source, unet, device_tiles=True).read_batch is not None
    detector = DetectionPredictor(*load_checkpoint(trained_detector[0], task="detection"), "cpu")
    assert DetectionRun(source, detector, device_tiles=True).read_batch is not None
    assert DetectionRun(source, detector).read_batch is None


def test_cohort_workers_take_device_tiles_on_cuda_unless_told() -> None:
    from napari_mitosis.cohort.pipeline import PipelineSettings

    auto = PipelineSettings(detector="d.safetensors", detect_in="tissue")
    assert auto.on_device_tiles(torch.device("cuda")) and not auto.on_device_tiles("cpu")
    off = PipelineSettings(detector="d.safetensors", detect_in="tissue", device_tiles=False)
    assert not off.on_device_tiles(torch.device("cuda"))
    assert PipelineSettings(detector="d", detect_in="tissue", device_tiles=True).on_device_tiles(
        "cpu"
    )
