"""``demo``: the main job on the embedded sample."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_mitosis.cli.options import CommandAdder


def _demo(args: argparse.Namespace) -> int:
    from napari_mitosis.demo.run import run_demo

    run_demo(Path(args.out), headless=args.headless, models=args.models, workers=args.workers)
    return 0


def register(command: CommandAdder) -> None:
    """Add ``demo``."""
    demo = command("demo", "run the main job on the embedded sample")
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    demo.add_argument(
        "--headless", action="store_true", help="save a screenshot instead of opening a window"
    )
    demo.add_argument(
        "--models",
        nargs="+",
        type=Path,
        default=(),
        help="your classifier/detector checkpoints (default: train demo models)",
    )
    demo.add_argument("--workers", type=int, help="local Dask workers (default: up to 2)")
    demo.set_defaults(run=_demo)
