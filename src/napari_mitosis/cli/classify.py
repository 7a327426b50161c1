"""``classify``: a slide's class heatmaps, mask and regions, with any classifier — ours,
a WSInfer model folder, TorchScript/ONNX with a card, or a registered name."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_mitosis.cli.options import (
    IMAGE_HELP,
    CommandAdder,
    add_device,
    add_device_tiles,
    add_model,
    add_mpp,
    add_overwrite,
    add_tta,
    parse_region,
)
from napari_mitosis.io.output_file import refuse_existing


def _classify(args: argparse.Namespace) -> int:
    from napari_mitosis.classification.heatmap_files import (
        heatmap_paths,
        patch_paths,
        write_heatmap,
    )
    from napari_mitosis.classification.run import classify_slide
    from napari_mitosis.models.checkpoint import read_card

    stem = args.image.stem
    classes = read_card(args.model).classes
    planned = heatmap_paths(args.out, stem, args.format, classes)
    planned += patch_paths(args.out, stem, csv=args.csv, tiles=args.tiles_geojson)
    refuse_existing(planned, overwrite=args.overwrite)
    result = classify_slide(
        args.image,
        args.model,
        region=parse_region(args.region),
        stride=args.stride,
        device=args.device,
        tissue_only=not args.all_tiles,
        min_tissue=args.min_tissue,
        threshold=args.threshold,
        tta=args.tta,
        amp=not args.no_amp,
        device_tiles=args.device_tiles,
        batch_size=args.batch_size,
        mpp=args.mpp,
    )
    paths = write_heatmap(
        result,
        args.out,
        stem,
        fmt=args.format,
        csv=args.csv,
        tiles=args.tiles_geojson,
        overwrite=args.overwrite,
    )
    done = f"{int(result.visited.sum())} of {result.visited.size} cells classified at level "
    areas = result.class_areas_mm2() or {}
    if result.binary:
        area = result.tumour_area_mm2()
        print(
            f"{args.image}: {done}{result.level}; tumour {int((result.mask == 1).sum())} cells"
            + (f" = {area:.3f} mm²" if area is not None else "")
        )
    else:
        counts = {n: int((result.mask == v).sum()) for v, n in result.label_names().items()}
        print(
            f"{args.image}: {done}{result.level}; "
            + ", ".join(
                f"{n} {c} cells" + (f" = {areas[n]:.3f} mm²" if n in areas else "")
                for n, c in counts.items()
            )
        )
    if result.note:
        print(f"  {result.note}")
    for path in paths:
        print(f"  {path}")
    return 0


def register(command: CommandAdder) -> None:
    cl = command("classify", "tumour (or per-class) heatmaps, mask and regions of a slide")
    cl.add_argument("image", type=Path, help=IMAGE_HELP)
    add_model(cl, "classifier")
    cl.add_argument("--out", type=Path, required=True, help="output folder")
    cl.add_argument("--region", help="y0,x0,y1,x1 in level-0 pixels (default: whole image)")
    cl.add_argument(
        "--stride", type=int, default=None, help="cell size in level px (default: patch/2)"
    )
    cl.add_argument("--min-tissue", type=float, default=0.3, help="skip cells with less tissue")
    cl.add_argument("--all-tiles", action="store_true", help="classify cells without tissue too")
    cl.add_argument(
        "--threshold", type=float, default=None, help="tumour probability (default: the card's)"
    )
    add_tta(cl)
    cl.add_argument(
        "--format",
        choices=("tiff", "ome-zarr"),
        default="tiff",
        help="heatmap + mask as two pyramidal TIFFs or one OME-Zarr (mask as its label image)",
    )
    cl.add_argument(
        "--csv",
        action="store_true",
        help="also <image>.patches.csv: minx, miny, width, height, prob_<class> per patch "
        "(level-0 px), as WSInfer writes",
    )
    cl.add_argument(
        "--tiles-geojson",
        action="store_true",
        help="also <image>.patches.geojson: every patch as a QuPath tile with its probabilities",
    )
    cl.add_argument("--batch-size", type=int, default=16, help="patches per forward pass")
    add_mpp(cl)
    add_device(cl)
    cl.add_argument(
        "--no-amp",
        action="store_true",
        help="float32 on CUDA too (slower; the CPU's heatmap within 1e-4, no float16 rounding)",
    )
    add_device_tiles(cl)
    add_overwrite(cl)
    cl.set_defaults(run=_classify)
