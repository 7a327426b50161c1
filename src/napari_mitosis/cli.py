"""The ``napari-mitosis`` command line: every step works without a napari window."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_mitosis.errors import OutputExistsError, SlideError


def _info(args: argparse.Namespace) -> int:
    from napari_mitosis.slide import open_slide

    with open_slide(args.path, color=args.color) as slide:
        if args.json:
            record = slide.metadata.as_dict()
            if not args.properties:
                record.pop("properties")
            print(json.dumps(record, indent=2))
        else:
            print(slide.summary())
    return 0


def _sample(args: argparse.Namespace) -> int:
    from napari_mitosis.synthetic import write_synthetic_slide

    truth = write_synthetic_slide(
        args.out, args.height, args.width, mpp=args.mpp, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote {args.out}: {args.width} × {args.height} px at {args.mpp} µm/px, "
          f"{len(truth.mitoses)} mitoses")  # fmt: skip
    return 0


def _demo(args: argparse.Namespace) -> int:
    from napari_mitosis.demo import run_demo

    run_demo(Path(args.out), headless=args.headless)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-mitosis",
        description="Whole-slide breast-cancer histopathology: slides, mitoses, tumour maps.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    info = commands.add_parser("info", help="print a slide's levels, µm/pixel and metadata")
    info.add_argument("path", type=Path)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--properties", action="store_true", help="with --json: all properties")
    info.add_argument("--color", choices=["raw", "srgb"], default="raw")
    info.set_defaults(run=_info)

    sample = commands.add_parser("sample", help="write a synthetic H&E slide with known mitoses")
    sample.add_argument("out", type=Path)
    sample.add_argument("--width", type=int, default=6144)
    sample.add_argument("--height", type=int, default=4096)
    sample.add_argument("--mpp", type=float, default=0.25, help="µm per pixel (default 0.25)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--overwrite", action="store_true")
    sample.set_defaults(run=_sample)

    demo = commands.add_parser("demo", help="run the main job on the embedded sample")
    demo.add_argument("--out", type=Path, default=Path("demo-output"))
    demo.add_argument(
        "--headless", action="store_true", help="save a screenshot instead of opening a window"
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (SlideError, OutputExistsError, FileNotFoundError, ValueError) as err:
        print(f"napari-mitosis: error: {err}", file=sys.stderr)
        return 2
