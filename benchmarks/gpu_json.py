"""The GPU throughput figures in one file, ``benchmarks/results/gpu.json``:

- ``device``: the GPU's name;
- ``large_slide_tiles`` / ``large_slide_seconds``: Inception-v3 at 299 px over every tissue
  cell of a Camelyon-size synthetic slide (``--field`` × ``--copies`` px square, ≥ 15k
  tissue tiles by default), end to end — slide opened, tissue found, patches decoded on the
  device (`engine.device_tiles`), heatmap made (goal ≤ 10 s);
- ``small_cnn_patches_per_s``: the small CNN at 96 px over the same slide, end to end
  (goal ≥ 10k/s);
- ``unet_engine_vs_model`` / ``detector_engine_vs_model``: the tiled engine on device
  tiles against the model's forward passes alone on the same tiles (goal ≤ 1.1×);
- ``inception_v3_vs_wsinfer``: the wall-time ratio read from a ``bench_vs_peers.py`` log
  (``--peers-log``, the ``peers-inception-large`` step of gpu_checks.sh; goal ≥ 2×).

Untrained models with batch norm calibrated on the slide (`calibrated_model`), under the
engines' defaults (AMP on CUDA). On the CPU (``--device cpu``, small sizes) it checks that
the script runs; its figures mean nothing there.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from calibrated_model import calibrate_batch_norm
from large_slide import write_large_slide
from napari_mitosis.classification.predictor import ClassifierPredictor
from napari_mitosis.classification.run import classify_slide
from napari_mitosis.detection.run import DetectionRun
from napari_mitosis.engine.tiled_inference import TilePredictor
from napari_mitosis.io.formats import open_slide
from napari_mitosis.models.card import ModelCard, build_model
from napari_mitosis.models.detector import DetectionPredictor, faster_rcnn
from napari_mitosis.models.unet import unet
from napari_mitosis.segmentation.run import SegmentationRun

PEERS_LINE = re.compile(r"vs WSInfer[^\n]*?wall\s+([\d.]+)×")


def synchronise(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def whole_slide(slide: Path, card: ModelCard, device: str, batch: int) -> tuple[int, float]:
    """(tissue cells classified, seconds) for one end-to-end run on device tiles."""
    model = calibrate_batch_norm(build_model(card), slide, card)
    predictor = ClassifierPredictor(model, card, device)
    classify_slide(slide, predictor, device=device, device_tiles=True, batch_size=batch)  # warm
    synchronise(device)
    started = time.perf_counter()
    result = classify_slide(
        slide, predictor, device=device, device_tiles=True, batch_size=batch, stride=card.input_size
    )
    synchronise(device)
    return int(np.asarray(result.visited).sum()), time.perf_counter() - started


def engine_vs_model(run_factory, predictor, device: str, repeats: int = 3) -> float:
    """Median engine time over the median time of the model alone on the same batches."""
    run = run_factory()
    batches = [run.read_batch(run.origins[i : i + run.batch_size])
               for i in range(0, len(run.origins), run.batch_size)]  # fmt: skip
    engine, model = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        run_factory().run()
        synchronise(device)
        engine.append(time.perf_counter() - started)
        started = time.perf_counter()
        for batch in batches:
            predictor(batch)
        synchronise(device)
        model.append(time.perf_counter() - started)
    return float(np.median(engine) / np.median(model))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, nargs="?", default=Path("benchmarks/results/gpu.json"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--field", type=int, default=6144, help="px of the repeated field")
    parser.add_argument("--copies", type=int, default=8, help="fields across and down")
    parser.add_argument("--engine-px", type=int, default=4096, help="side of the engine region")
    parser.add_argument("--peers-log", type=Path, help="a bench_vs_peers.py log (Inception)")
    parser.add_argument("--work", type=Path, default=Path(".bench/gpu"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    slide = args.work / f"large-{args.field}x{args.copies}.tif"
    if not slide.exists():
        write_large_slide(slide, args.field, args.copies, mpp=0.5)
    cuda = torch.device(args.device).type == "cuda"
    record: dict[str, object] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "slide_px": args.field * args.copies,
    }
    inception = ModelCard("inception_v3", {"outputs": 1}, task="classification",
                          input_size=299, mpp=0.5)  # fmt: skip
    tiles, seconds = whole_slide(slide, inception, args.device, 128 if cuda else 8)
    record |= {"large_slide_tiles": tiles, "large_slide_seconds": round(seconds, 2)}
    small = ModelCard("small_cnn", {"outputs": 1, "width": 32}, task="classification",
                      input_size=96, mpp=0.5)  # fmt: skip
    patches, seconds = whole_slide(slide, small, args.device, 512 if cuda else 32)
    record["small_cnn_patches_per_s"] = round(patches / seconds, 1)

    source = open_slide(slide).sources[0]
    side = min(args.engine_px, source.shape[0], source.shape[1])
    region = (0, 0, side, side)
    torch.manual_seed(0)
    u_card = ModelCard("unet", {}, task="segmentation", input_size=256)
    u_predictor = TilePredictor(unet(), u_card, args.device)
    record["unet_engine_vs_model"] = round(engine_vs_model(
        lambda: SegmentationRun(source, u_predictor, region=region, batch_size=16 if cuda else 2,
                                overlap=32, device_tiles=True),
        u_predictor, args.device), 3)  # fmt: skip
    d_card = ModelCard("faster_rcnn", {"backbone": "mobilenet_v3", "tile": 256},
                       task="detection", input_size=256, classes=("background", "mitosis"))  # fmt: skip
    d_predictor = DetectionPredictor(faster_rcnn(backbone="mobilenet_v3", tile=256).eval(),
                                     d_card, args.device)  # fmt: skip
    record["detector_engine_vs_model"] = round(engine_vs_model(
        lambda: DetectionRun(source, d_predictor, region=region, batch_size=8 if cuda else 2,
                             device_tiles=True),
        d_predictor, args.device), 3)  # fmt: skip
    if args.peers_log is not None and args.peers_log.is_file():
        found = PEERS_LINE.findall(args.peers_log.read_text())
        record["inception_v3_vs_wsinfer"] = float(found[0]) if found else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
