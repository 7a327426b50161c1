"""Where a whole-slide ``napari-mitosis classify`` run spends its time: the CLI under
cProfile (main thread: imports, model, tissue, waiting for reader threads, forward passes,
writing), on a large synthetic slide with a batch-norm-calibrated model.

    python benchmarks/profile_classify.py [--size 4096] [--copies 6]
        [--architecture inception_v3] [--patch 299] [--device cuda] [--out DIR]
"""

from __future__ import annotations

import argparse
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from calibrated_model import calibrated_classifier, classify_args
from large_slide import write_large_slide


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--architecture", default="inception_v3")
    parser.add_argument("--patch", type=int, default=299)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, help="keep the profile here (default: discard)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        slide = write_large_slide(work / "slide.tif", args.size, args.copies)
        _, _, checkpoint = calibrated_classifier(work, slide, args.architecture, args.patch)
        profile = (args.out or work) / "classify.prof"
        profile.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(profile),
            *classify_args(
                slide,
                checkpoint,
                work / "out",
                patch=args.patch,
                batch=args.batch,
                device=args.device,
            ),
        ]
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        print(
            f"{args.architecture} {args.patch} px on {args.device}, "
            f"{args.size * args.copies}² px slide: {time.perf_counter() - started:.1f} s wall"
        )
        stats = pstats.Stats(str(profile))
        stats.sort_stats("cumulative").print_stats(r"napari_mitosis|result|wait|acquire", 30)
        stats.sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
