"""Mitosis segmentation commands: ICPR 2012 conversion, U-Net training, ``segment``, pseudo-masks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_mitosis.cli.options import (
    IMAGE_HELP,
    CommandAdder,
    add_device,
    add_device_tiles,
    add_model,
    add_mpp,
    add_overwrite,
    add_recipe,
    add_stain,
    add_steps,
    add_tiling,
    add_training,
    parse_region,
    slide_provenance,
    slide_split_options,
    stain_options,
)
from napari_mitosis.io.output_file import atomic_output, refuse_existing


def _convert_icpr2012(args: argparse.Namespace) -> int:
    from napari_mitosis.io.detections import boxes_from_labels, write_detections_csv
    from napari_mitosis.io.mitosis_datasets import icpr2012_pairs
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
    from napari_mitosis.io.rle import labels_to_coco

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


def _train_unet(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.io.mitosis_datasets import icpr2012_pairs
    from napari_mitosis.segmentation.training import UNetTraining, train_unet

    notes = ""
    if args.data.is_file():  # a slide, with its figures' outlines in --annotations
        from napari_mitosis.segmentation.slide_masks import slide_pairs

        options = slide_split_options(
            args.data, args, "a GeoJSON of mitosis outlines, or a labels TIFF of the slide's size"
        )
        found = slide_pairs(args.data, args.annotations, **options)
        train, val, mpp = found.train, found.validation, found.mpp or args.mpp
        notes = slide_provenance(args.data, args.annotations, found.figures, found.description)
        print(f"{len(train)} training and {len(val)} validation fields ({found.description})")
    else:
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
        encoder=args.encoder,
        pretrained=args.pretrained,
        encoder_lr_scale=args.encoder_lr_scale,
        freeze_encoder_steps=args.freeze_encoder_steps,
        init=args.init,
        mpp=mpp,
        seed=args.seed,
        device=args.device,
        learning_rate=args.lr,
        notes=notes,
        **stain_options(args),
    )
    report = train_unet(
        train,
        val,
        args.out,
        config,
        overwrite=args.overwrite,
        progress=lambda s, n, r: print(
            f"step {s}/{n}: loss {r['train_loss']:.3f}  validation Dice {r['val_dice']:.3f}  "
            f"({r['seconds']:.0f} s)",
            flush=True,
        ),
    )
    print(f"best validation Dice {report.best_dice:.3f} at step {report.best_step} → {args.out}")
    return 0


def _segment(args: argparse.Namespace) -> int:
    from napari_mitosis.segmentation.run import segment_slide, write_segmentation

    result = segment_slide(
        args.image,
        args.model,
        region=parse_region(args.region),
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        threshold=args.threshold,
        min_area=args.min_area,
        batch_size=args.batch_size,
        tissue_only=args.tissue_only,
        min_tissue=args.min_tissue,
        mpp=args.mpp,
        device_tiles=args.device_tiles,
    )
    paths = write_segmentation(result, args.out, Path(args.image).stem, overwrite=args.overwrite)
    note = f" ({result.note})" if result.note else ""
    print(f"{args.image}: {len(result.detections)} mitotic figures at level {result.level}{note}")
    for path in paths:
        print(f"  {path}")
    return 0


def _pseudo_masks(args: argparse.Namespace) -> int:
    from napari_mitosis.engine.tiled_inference import TilePredictor
    from napari_mitosis.io.detections import write_detections_csv
    from napari_mitosis.io.mitosis_datasets import icpr2014_fields
    from napari_mitosis.io.pyramid_tiff import write_pyramid_tiff
    from napari_mitosis.models.checkpoint import load_checkpoint
    from napari_mitosis.segmentation.run import pseudo_masks

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


def register(command: CommandAdder) -> None:
    """Add ``convert-icpr2012``, ``train-unet``, ``segment`` and ``pseudo-masks``."""
    c12 = command("convert-icpr2012", "ICPR 2012 pixel CSVs → label masks, boxes, COCO RLE")
    c12.add_argument("folder", type=Path, help="images with a same-name .csv beside each")
    c12.add_argument("--out", type=Path, required=True, help="output folder")
    c12.add_argument("--min-area", type=int, default=0, help="smallest box kept (pixels)")
    add_overwrite(c12)
    c12.set_defaults(run=_convert_icpr2012)

    tr = command("train-unet", "train the mitosis U-Net on ICPR 2012-style data")
    tr.add_argument(
        "data",
        type=Path,
        help="images with ICPR 2012 .csv annotations beside them, or a slide (--annotations)",
    )
    tr.add_argument(
        "--annotations",
        type=Path,
        help="for a slide: a GeoJSON of mitosis outlines (level-0 px) or a labels TIFF",
    )
    tr.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    add_steps(tr, crop=128)
    tr.add_argument(
        "--loss",
        choices=["dice+bce", "bce", "focal"],
        default="dice+bce",
        help="per-pixel loss; Dice offsets how few pixels are mitosis",
    )
    tr.add_argument("--base-width", type=int, default=32, help="channels of the first level")
    tr.add_argument("--depth", type=int, default=4, help="down-sampling levels")
    tr.add_argument(
        "--encoder",
        choices=("resnet18", "resnet34", "resnet50"),
        help="a torchvision ResNet as the encoder (instead of --base-width/--depth)",
    )
    tr.add_argument(
        "--pretrained",
        help="with --encoder: its starting weights, a torchvision weights name (e.g. "
        "ResNet34_Weights.IMAGENET1K_V1, downloaded and cached when online) or a local "
        "state-dict file (.safetensors, or .pt/.pth read without running code)",
    )
    tr.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=1.0,
        help="with --encoder: it learns at --lr × this (fine-tuning: e.g. 0.1)",
    )
    tr.add_argument(
        "--freeze-encoder-steps",
        type=int,
        default=0,
        help="with --encoder: steps that train the decoder only",
    )
    tr.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    add_stain(tr)
    tr.add_argument("--init", help="a U-Net to fine-tune: a checkpoint or a registered name")
    add_recipe(tr, "train-unet")
    add_training(tr, batch=8, lr=1e-3)
    tr.set_defaults(run=_train_unet)

    sg = command("segment", "segment mitoses in an image or slide with a U-Net")
    sg.add_argument("image", type=Path, help=IMAGE_HELP)
    add_model(sg, "U-Net")
    sg.add_argument("--out", type=Path, required=True, help="output folder")
    sg.add_argument("--region", help="y0,x0,y1,x1 in level-0 pixels (default: whole image)")
    sg.add_argument("--tissue-only", action="store_true", help="skip tiles without tissue")
    sg.add_argument(
        "--min-tissue", type=float, default=0.05, help="with --tissue-only: tissue fraction"
    )
    sg.add_argument("--tile", type=int, default=None, help="tile px (default: the card's)")
    sg.add_argument(
        "--threshold", type=float, default=None, help="mitosis probability (default: the card's)"
    )
    sg.add_argument("--min-area", type=int, default=0, help="smallest figure kept (level px)")
    add_mpp(sg)
    add_tiling(sg, batch=4)
    add_device_tiles(sg)
    add_device(sg)
    add_overwrite(sg)
    sg.set_defaults(run=_segment)

    pm = command("pseudo-masks", "U-Net masks around ICPR 2014 centroids → boxes")
    pm.add_argument("folder", type=Path, help="images with a same-name centroid .csv beside each")
    add_model(pm, "U-Net")
    pm.add_argument("--out", type=Path, required=True, help="output folder")
    pm.add_argument("--radius-um", type=float, default=4.0, help="fallback disc radius (µm)")
    pm.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    add_device(pm)
    add_overwrite(pm)
    pm.set_defaults(run=_pseudo_masks)
