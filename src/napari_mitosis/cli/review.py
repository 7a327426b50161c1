"""``report``: a reviewed slide's mitotic count, hotspot and score as an HTML report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_mitosis.cli.options import IMAGE_HELP, CommandAdder, add_mpp, add_overwrite


def _report(args: argparse.Namespace) -> int:
    from napari_mitosis.detection.report import basis_line, write_report
    from napari_mitosis.detection.review import Review
    from napari_mitosis.engine.tissue import slide_tissue_mask
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.io.geojson import read_geojson
    from napari_mitosis.io.output_file import refuse_existing
    from napari_mitosis.models.checkpoint import read_card

    refuse_existing([args.out], overwrite=args.overwrite)
    try:
        annotations = read_geojson(args.detections)
    except FileNotFoundError:
        raise FileNotFoundError(f"{args.detections}: no such detections file") from None
    review = Review.from_annotations(annotations)
    card = read_card(args.model) if args.model else None
    with open_slide(args.image, mpp=args.mpp) as slide:
        numbers = write_report(
            args.out,
            slide,
            review,
            slide_tissue_mask(slide),
            field_diameter_mm=args.field_diameter_mm,
            model_card=card,
            detections_path=args.detections,
            count_unreviewed=args.count_unreviewed,
            overwrite=args.overwrite,
        )
    if numbers["unreviewed"]:
        print(basis_line(numbers))
    spot = numbers["hotspot"]
    per_10 = "—" if spot["per_10_hpf"] is None else f"{spot['per_10_hpf']:.1f}"
    print(
        f"{args.image}: {numbers['mitoses']} mitoses ({numbers['atypical']} atypical), "
        f"{numbers['rejected']} rejected, {numbers['unreviewed']} not reviewed; hotspot "
        f"{per_10} per 10 HPF → mitotic score {numbers['mitotic_score']}"
        + (" (a machine estimate)" if numbers["basis"] == "machine estimate" else "")
        + f"; {args.out}"
    )
    if numbers["unreviewed"] and numbers["basis"] == "reviewed":
        machine = numbers["machine"]
        spot = machine["hotspot_per_10_hpf"]
        print(
            f"  {numbers['unreviewed']} of {machine['candidates']} candidates are not reviewed: "
            f"the model's own count is {'—' if spot is None else f'{spot:.1f}'} per 10 HPF "
            f"→ score {machine['mitotic_score']}, a machine count, not a pathologist's"
        )
    machine = numbers["machine"]
    if machine["subtyped"]:
        share = machine["atypical_fraction"]
        print(
            f"  the classifier calls {machine['atypical']} of {machine['candidates']} "
            f"candidates atypical ({'—' if share is None else f'{share:.0%}'}); the reviewer "
            f"confirmed {numbers['atypical']}"
        )
    if args.json:
        print(json.dumps(numbers))
    return 0


def register(command: CommandAdder) -> None:
    rp = command("report", "a reviewed slide's mitotic count, hotspot and score as HTML")
    rp.add_argument("image", type=Path, help=IMAGE_HELP)
    rp.add_argument(
        "--detections",
        type=Path,
        required=True,
        help="reviewed candidates: QuPath GeoJSON saved by the review widget (or any points)",
    )
    rp.add_argument("--out", type=Path, required=True, help="the report (.html)")
    rp.add_argument(
        "--field-diameter-mm",
        type=float,
        default=0.55,
        help="microscope field diameter the mitotic score is given for (0.40–0.69 mm)",
    )
    rp.add_argument("--model", type=Path, help="the detector that proposed them (its card)")
    rp.add_argument(
        "--count-unreviewed",
        action="store_true",
        help="count candidates nobody reviewed as mitoses (the grade is then a machine estimate)",
    )
    rp.add_argument("--json", action="store_true", help="end with the numbers as one JSON line")
    add_mpp(rp)
    add_overwrite(rp)
    rp.set_defaults(run=_report)
