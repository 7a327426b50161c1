"""The ``napari-mitosis`` command line: every step works without a napari window."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from napari_mitosis.errors import OutputExistsError, SlideError
from napari_mitosis.output_file import atomic_output, refuse_existing


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
    print(
        f"wrote {args.out}: {args.width} × {args.height} px at {args.mpp} µm/px, "
        f"{len(truth.mitoses)} mitoses"
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    from napari_mitosis.demo import run_demo

    run_demo(Path(args.out), headless=args.headless)
    return 0


def _convert_icpr2012(args: argparse.Namespace) -> int:
    from napari_mitosis.detections import boxes_from_labels, write_detections_csv
    from napari_mitosis.mitosis_datasets import icpr2012_pairs
    from napari_mitosis.pyramid_tiff import write_pyramid_tiff
    from napari_mitosis.rle import labels_to_coco

    pairs = icpr2012_pairs(args.folder)
    suffixes = (".mask.tif", ".boxes.csv", ".rle.json")
    refuse_existing(
        (args.out / f"{f.image_path.stem}{x}" for f, _ in pairs for x in suffixes),
        overwrite=args.overwrite,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for field, labels in pairs:
        stem = field.image_path.stem
        write_pyramid_tiff(
            args.out / f"{stem}.mask.tif",
            labels,
            mpp=field.mpp,
            layer_type="labels",
            overwrite=args.overwrite,
        )
        boxes = boxes_from_labels(labels, min_area=args.min_area)
        boxes.mpp = field.mpp
        write_detections_csv(args.out / f"{stem}.boxes.csv", boxes, overwrite=args.overwrite)
        with atomic_output(args.out / f"{stem}.rle.json", overwrite=args.overwrite) as tmp:
            tmp.write_text(json.dumps(labels_to_coco(labels)))
        print(f"{field.image_path.name}: {int(labels.max())} mitoses, {len(boxes)} boxes")
    return 0


def _convert_icpr2014(args: argparse.Namespace) -> int:
    from napari_mitosis.geojson import Annotation, write_geojson
    from napari_mitosis.mitosis_datasets import icpr2014_fields

    fields = icpr2014_fields(args.folder)
    refuse_existing(
        (args.out / f"{f.image_path.stem}.geojson" for f, _, _ in fields), overwrite=args.overwrite
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for field, centroids, confidence in fields:
        points = [
            Annotation(c[None], "point", "Mitosis", {"confidence": float(p)})
            for c, p in zip(centroids, confidence, strict=True)
        ]
        write_geojson(
            args.out / f"{field.image_path.stem}.geojson", points, overwrite=args.overwrite
        )
        print(f"{field.image_path.name}: {len(points)} centroids")
    return 0


def _train_unet(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.mitosis_datasets import icpr2012_pairs
    from napari_mitosis.segmentation_training import UNetTraining, train_unet

    pairs = icpr2012_pairs(args.data)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(pairs))
    n_val = max(1, round(len(pairs) * args.val_fraction))
    if len(pairs) < 2:
        raise ValueError(f"{args.data}: need at least 2 annotated images (train + validation)")
    val = [(pairs[i][0].image, pairs[i][1] > 0) for i in order[:n_val]]
    train = [(pairs[i][0].image, pairs[i][1] > 0) for i in order[n_val:]]
    mpp = pairs[0][0].mpp[1] if pairs[0][0].mpp else args.mpp
    config = UNetTraining(
        crop=args.crop,
        batch_size=args.batch_size,
        max_steps=args.steps,
        eval_every=args.eval_every,
        patience=args.patience,
        loss=args.loss,
        base_width=args.base_width,
        depth=args.depth,
        mpp=mpp,
        seed=args.seed,
        device=args.device,
        learning_rate=args.lr,
    )
    report = train_unet(
        train,
        val,
        args.out,
        config,
        overwrite=args.overwrite,
        progress=lambda s, n, r: print(f"step {s}/{n}: {r}", flush=True),
    )
    print(f"best validation Dice {report.best_dice:.3f} at step {report.best_step} → {args.out}")
    return 0


def _region(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    values = [int(v) for v in text.split(",")]
    if len(values) != 4:
        raise ValueError(f"--region takes y0,x0,y1,x1 in level-0 pixels, got {text!r}")
    return values[0], values[1], values[2], values[3]


def _segment(args: argparse.Namespace) -> int:
    from napari_mitosis.segmentation import segment_slide, write_segmentation

    result = segment_slide(
        args.image,
        args.model,
        region=_region(args.region),
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        threshold=args.threshold,
        min_area=args.min_area,
        batch_size=args.batch_size,
        tissue_only=args.tissue_only,
        min_tissue=args.min_tissue,
    )
    paths = write_segmentation(result, args.out, Path(args.image).stem, overwrite=args.overwrite)
    print(f"{args.image}: {len(result.detections)} mitotic figures at level {result.level}")
    for path in paths:
        print(f"  {path}")
    return 0


def _pseudo_masks(args: argparse.Namespace) -> int:
    from napari_mitosis.checkpoint import load_checkpoint
    from napari_mitosis.detections import write_detections_csv
    from napari_mitosis.mitosis_datasets import icpr2014_fields
    from napari_mitosis.pyramid_tiff import write_pyramid_tiff
    from napari_mitosis.segmentation import pseudo_masks
    from napari_mitosis.tiled_inference import TilePredictor

    model, card = load_checkpoint(args.model, task="segmentation")
    predictor = TilePredictor(model, card, args.device)
    fields = icpr2014_fields(args.folder)
    outputs = (
        args.out / f"{f.image_path.stem}{x}"
        for f, _, _ in fields
        for x in (".mask.tif", ".boxes.csv")
    )
    refuse_existing(outputs, overwrite=args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    for field, centroids, _ in fields:
        mpp = field.mpp[1] if field.mpp else args.mpp
        labels, boxes, fell_back = pseudo_masks(
            field.image, centroids, predictor, mpp=mpp, fallback_radius_um=args.radius_um
        )
        boxes.mpp = (mpp, mpp)
        stem = field.image_path.stem
        write_pyramid_tiff(
            args.out / f"{stem}.mask.tif",
            labels,
            mpp=(mpp, mpp),
            layer_type="labels",
            overwrite=args.overwrite,
        )
        write_detections_csv(args.out / f"{stem}.boxes.csv", boxes, overwrite=args.overwrite)
        print(
            f"{field.image_path.name}: {len(centroids)} centroids, {int(fell_back.sum())} fell back to a disc"
        )
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

    c12 = commands.add_parser(
        "convert-icpr2012", help="ICPR 2012 pixel CSVs → label masks, boxes, COCO RLE"
    )
    c12.add_argument("folder", type=Path, help="images with a same-name .csv beside each")
    c12.add_argument("--out", type=Path, required=True)
    c12.add_argument("--min-area", type=int, default=0, help="smallest box kept (pixels)")
    c12.add_argument("--overwrite", action="store_true")
    c12.set_defaults(run=_convert_icpr2012)

    c14 = commands.add_parser(
        "convert-icpr2014", help="ICPR 2014 centroid CSVs → QuPath GeoJSON points"
    )
    c14.add_argument("folder", type=Path)
    c14.add_argument("--out", type=Path, required=True)
    c14.add_argument("--overwrite", action="store_true")
    c14.set_defaults(run=_convert_icpr2014)

    tr = commands.add_parser("train-unet", help="train the mitosis U-Net on ICPR 2012-style data")
    tr.add_argument("data", type=Path, help="images with ICPR 2012 .csv annotations beside them")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    tr.add_argument("--steps", type=int, default=2000)
    tr.add_argument("--eval-every", type=int, default=100)
    tr.add_argument("--patience", type=int, default=5)
    tr.add_argument("--crop", type=int, default=128)
    tr.add_argument("--batch-size", type=int, default=8)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--loss", choices=["dice+bce", "bce", "focal"], default="dice+bce")
    tr.add_argument("--base-width", type=int, default=32)
    tr.add_argument("--depth", type=int, default=4)
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--overwrite", action="store_true")
    tr.set_defaults(run=_train_unet)

    sg = commands.add_parser("segment", help="segment mitoses in an image or slide with a U-Net")
    sg.add_argument("image", type=Path)
    sg.add_argument("--model", type=Path, required=True)
    sg.add_argument("--out", type=Path, required=True, help="output folder")
    sg.add_argument("--region", help="y0,x0,y1,x1 in level-0 pixels (default: whole image)")
    sg.add_argument("--tissue-only", action="store_true", help="skip tiles without tissue")
    sg.add_argument(
        "--min-tissue", type=float, default=0.05, help="with --tissue-only: tissue fraction"
    )
    sg.add_argument("--tile", type=int, default=None)
    sg.add_argument("--overlap", type=int, default=64)
    sg.add_argument("--threshold", type=float, default=None)
    sg.add_argument("--min-area", type=int, default=0)
    sg.add_argument("--batch-size", type=int, default=4)
    sg.add_argument("--device", default="auto")
    sg.add_argument("--overwrite", action="store_true")
    sg.set_defaults(run=_segment)

    pm = commands.add_parser("pseudo-masks", help="U-Net masks around ICPR 2014 centroids → boxes")
    pm.add_argument("folder", type=Path)
    pm.add_argument("--model", type=Path, required=True)
    pm.add_argument("--out", type=Path, required=True)
    pm.add_argument("--radius-um", type=float, default=4.0, help="fallback disc radius (µm)")
    pm.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    pm.add_argument("--device", default="auto")
    pm.add_argument("--overwrite", action="store_true")
    pm.set_defaults(run=_pseudo_masks)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (SlideError, OutputExistsError, FileNotFoundError, ValueError) as err:
        print(f"napari-mitosis: error: {err}", file=sys.stderr)
        return 2
