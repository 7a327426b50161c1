"""Commands on slides themselves: ``info`` and ``sample``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_mitosis.cli.options import IMAGE_HELP, CommandAdder, add_overwrite


def _info(args: argparse.Namespace) -> int:
    from napari_mitosis.io.formats import open_slide

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
    from napari_mitosis.io.geojson import Annotation, write_geojson
    from napari_mitosis.io.output_file import refuse_existing
    from napari_mitosis.samples.synthetic import write_synthetic_slide

    points = args.out.with_name(f"{args.out.name.split('.')[0]}.mitoses.geojson")
    refuse_existing((args.out, points), overwrite=args.overwrite)
    truth = write_synthetic_slide(
        args.out, args.height, args.width, mpp=args.mpp, seed=args.seed, overwrite=args.overwrite
    )
    mitoses = [Annotation(c[None], "point", "Mitosis") for c in truth.mitoses]
    write_geojson(points, mitoses, overwrite=args.overwrite)  # QuPath points, level-0 px
    print(
        f"wrote {args.out}: {args.width} × {args.height} px at {args.mpp} µm/px, "
        f"{len(truth.mitoses)} mitoses (their centres: {points})"
    )
    return 0


def register(command: CommandAdder) -> None:
    """Add ``info`` and ``sample``."""
    info = command("info", "print a slide's levels, µm/pixel and metadata")
    info.add_argument("path", type=Path, help=IMAGE_HELP)
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.add_argument("--properties", action="store_true", help="with --json: all properties")
    info.add_argument(
        "--color",
        choices=["raw", "srgb"],
        default="raw",
        help="srgb: pixels through the slide's embedded ICC profile",
    )
    info.set_defaults(run=_info)

    sample = command(
        "sample",
        "write a synthetic H&E slide with known mitoses, and their centres as QuPath GeoJSON "
        "points (OUT.mitoses.geojson)",
    )
    sample.add_argument("out", type=Path, help="the slide to write (pyramidal TIFF)")
    sample.add_argument("--width", type=int, default=6144, help="px")
    sample.add_argument("--height", type=int, default=4096, help="px")
    sample.add_argument("--mpp", type=float, default=0.25, help="µm per pixel")
    sample.add_argument("--seed", type=int, default=0, help="another seed, another slide")
    add_overwrite(sample, "an existing file")
    sample.set_defaults(run=_sample)
