"""Mitosis detection commands: ICPR 2014 conversion, detector training, ``detect``, challenge scoring."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_mitosis.cli.midog import add_coco_options
from napari_mitosis.cli.options import (
    BACKBONES,
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
    slide_provenance,
    slide_split_options,
    stain_options,
)
from napari_mitosis.cli.subtype import add_candidate_classifiers
from napari_mitosis.io.output_file import refuse_existing


def _convert_icpr2014(args: argparse.Namespace) -> int:
    from napari_mitosis.io.geojson import Annotation, write_geojson
    from napari_mitosis.io.mitosis_datasets import icpr2014_fields

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


def _detection_fields(args: argparse.Namespace) -> list[Any]:
    from napari_mitosis.io.mitosis_datasets import boxed_fields, coco_fields

    if args.coco is not None:
        return coco_fields(
            args.coco, args.images, tumour_types=args.tumour_types, box_format=args.coco_boxes
        )
    return boxed_fields(args.images, args.annotations)


def _negatives(annotated: Any) -> tuple[Any, ...]:
    """A reviewed field's hard negatives, as the third item of a training field."""
    negatives = getattr(annotated, "negatives", None)
    return () if negatives is None or not len(negatives) else (negatives,)


def _centred_training_fields(args: argparse.Namespace) -> tuple[list, list, float, str]:
    """Training fields (padded, so the figure moves) and validation crops, split by slide."""
    from napari_mitosis.detection.centred_crops import padded_field, read_centred_crops

    crops = read_centred_crops(args.images)
    rest, held = crops.split(args.val_fraction, args.seed)
    boxes, centres = crops.boxes(args.mpp, args.box_um), crops.centres()
    train = [padded_field(crops.images[i], boxes[i]) for i in rest]
    if args.crop_negatives:  # each crop's other nuclei, as hard negatives
        from napari_mitosis.detection.centred_crops import other_nuclei

        train = [
            (*field, other_nuclei(crops.images[i], args.mpp, args.distance_um) + pad)
            for i, field in zip(rest, train, strict=True)
            for pad in [(field[0].shape[0] - crops.images[i].shape[0]) // 2]
        ]
    validation = [(crops.images[i], centres[i]) for i in held]
    slides = len(set(crops.groups[held]))
    return train, validation, args.mpp, f" (split by slide: {slides} slides held out)"


def _slide_training_fields(args: argparse.Namespace) -> tuple[list, list, float, str, str]:
    """Fields of a slide around its annotated figures, held out by region."""
    from napari_mitosis.detection.slide_fields import slide_fields

    options = slide_split_options(
        args.images, args, "a GeoJSON of QuPath points or boxes, or a reviewed GeoJSON"
    )
    fields = slide_fields(args.images, args.annotations, box_um=args.box_um, **options)
    provenance = slide_provenance(
        args.images, args.annotations, fields.positives, fields.description
    )
    return (
        fields.train,
        fields.validation,
        fields.mpp or args.mpp,
        f" ({fields.description})",
        provenance,
    )


def _negative_tissue(args: argparse.Namespace, mpp: float) -> tuple[list, list, str]:
    """``--negatives``: tissue without figures at the model's µm/px, split by column into
    training and validation parts (``--negative-val-fraction`` of its nuclei held out)."""
    from napari_mitosis.detection.negative_tissue import NegativeRegion, read_negative_field

    train, validation = [], []
    for text in args.negatives or ():
        tissue = read_negative_field(NegativeRegion.parse(text), mpp)
        if args.negative_val_fraction > 0:
            part, held = tissue.split_columns(args.negative_val_fraction)
            train.append(part)
            validation.append(held)
        else:
            train.append(tissue)
    if not train:
        return [], [], ""
    mm2 = sum(t.tissue_mm2 for t in train), sum(t.tissue_mm2 for t in validation)
    nuclei = sum(len(t.nuclei) for t in train)
    print(
        f"negative tissue: {mm2[0]:.3f} mm² ({nuclei} nuclei) to train on, "
        f"{mm2[1]:.3f} mm² held out for validation"
    )
    return train, validation, "negative tissue: " + ", ".join(args.negatives)


def _train_detector(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.detection.training import DetectorTraining, train_detector
    from napari_mitosis.io.detections import Detections
    from napari_mitosis.models.inference_model import pick_device

    notes = args.notes
    if args.images.is_file():  # a slide, with its annotations in one GeoJSON
        train, validation, mpp, split, provenance = _slide_training_fields(args)
        notes = "; ".join(n for n in (notes, provenance) if n)
    elif args.centred_crops:
        train, validation, mpp, split = _centred_training_fields(args)
    else:
        fields = _detection_fields(args)
        if len(fields) < 2:
            raise ValueError(
                f"{args.images}: need at least 2 annotated images (train + validation)"
            )
        from napari_mitosis.io.coco import split_groups

        groups = [field.group for field, _ in fields]  # tumour types, from a COCO file
        rest, held = split_groups(groups, args.val_fraction, args.seed)
        known = [f.mpp[1] for f, _ in fields if f.mpp]
        mpp = float(np.median(known)) if known else args.mpp
        train = [(fields[i][0].image, fields[i][1], *_negatives(fields[i][0])) for i in rest]
        validation = [(fields[i][0].image, Detections(fields[i][1]).centres) for i in held]
        named = sorted({groups[i] for i in held} - {""})
        split = f" (split by image; validation holds {', '.join(named)})" if named else ""
    negatives, negative_validation, provenance = _negative_tissue(args, mpp)
    notes = "; ".join(n for n in (notes, provenance) if n)
    backbone = args.backbone
    if backbone == "auto":  # ResNet-50 where a GPU makes it affordable
        backbone = "resnet50_v2" if pick_device(args.device).type == "cuda" else "mobilenet_v3"
    config = DetectorTraining(
        backbone=backbone,
        crop=args.crop,
        batch_size=args.batch_size,
        max_steps=args.steps,
        eval_every=args.eval_every,
        patience=args.patience,
        learning_rate=args.lr,
        distance_um=args.distance_um,
        mpp=mpp,
        seed=args.seed,
        device=args.device,
        init=args.init,
        backbone_weights=args.backbone_weights,
        notes=notes,
        negative_fraction=args.negative_fraction,
        mine_threshold=args.mine_threshold,
        negative_mm2_per_figure=args.negative_mm2_per_figure,
        **stain_options(args),
    )
    print(
        f"{len(train)} training and {len(validation)} validation images at {mpp:g} µm/px"
        f"{split}; {backbone} backbone"
    )
    report = train_detector(
        train,
        validation,
        args.out,
        config,
        overwrite=args.overwrite,
        progress=_print_step,
        negatives=negatives,
        negative_validation=negative_validation,
    )
    print(f"best validation F1 {report.best_f1:.3f} at step {report.best_step} → {args.out}")
    return 0


def _print_step(step: int, steps: int, record: dict[str, float]) -> None:
    text = (
        f"step {step}/{steps}: loss {record['train_loss']:.3f}  validation F1 "
        f"{record['val_f1']:.3f} (P {record['val_precision']:.3f}, R {record['val_recall']:.3f})"
    )
    if "val_negative_per_mm2" in record:
        text += f", {record['val_negative_per_mm2']:.1f} false per mm² of negative tissue"
    if "mined" in record:
        text += f"; {int(record['mined'])} candidates mined"
    print(text, flush=True)


def _detect(args: argparse.Namespace) -> int:
    from napari_mitosis.cli.subtype import detect_and_classify

    return detect_and_classify(args)


def _evaluate_detector(args: argparse.Namespace) -> int:
    from napari_mitosis.detection.evaluation import (
        evaluate_detections,
        write_evaluation_csv,
        write_pr_plot,
    )
    from napari_mitosis.detection.run import detect_array
    from napari_mitosis.io.mitosis_datasets import centroid_fields
    from napari_mitosis.models.checkpoint import load_checkpoint
    from napari_mitosis.models.detector import DetectionPredictor

    table, plot = args.out / "evaluation.csv", args.out / "precision_recall.png"
    refuse_existing((table, plot), overwrite=args.overwrite)
    model, card = load_checkpoint(args.model, task="detection")
    predictor = DetectionPredictor(model, card, args.device)
    given = args.mpp or card.mpp
    groups: dict[str, str] = {}  # image → tumour type (COCO files name it)
    if args.centred_crops:  # every crop's one figure at its centre
        from napari_mitosis.detection.centred_crops import read_centred_crops

        crops = read_centred_crops(args.images)
        fields = [
            (name, image, centre, (given, given) if given else None)
            for name, image, centre in zip(crops.names, crops.images, crops.centres(), strict=True)
        ]
    elif args.coco is not None:  # truth: the mitotic figures' box centres
        from napari_mitosis.io.detections import Detections

        boxed = _detection_fields(args)
        fields = [
            (f.image_path.name, f.image, Detections(boxes).centres,
             f.mpp or ((given, given) if given else None))
            for f, boxes in boxed
        ]  # fmt: skip
        groups = {f.image_path.name: f.group for f, _ in boxed}
    else:
        fields = [
            (f.image_path.name, f.image, truth, f.mpp or ((given, given) if given else None))
            for f, truth in centroid_fields(args.images, args.annotations)
        ]
    scored = []
    for name, image, truth, mpp in fields:
        found = detect_array(
            image,
            predictor,
            overlap=args.overlap,
            batch_size=args.batch_size,
            mpp=mpp,
            score_threshold=0.0,
        )
        scored.append((name, found, truth, mpp[1] if mpp else None))
    threshold = card.threshold if args.threshold is None else args.threshold
    evaluation = evaluate_detections(scored, threshold=threshold, distance_um=args.distance_um)
    print(evaluation.table(groups))
    print(evaluation.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    write_evaluation_csv(table, evaluation, overwrite=args.overwrite)
    write_pr_plot(plot, evaluation, overwrite=args.overwrite)
    print(f"  {table}\n  {plot}")
    scores = evaluation.as_dict()
    if args.negatives:
        scores["negatives"] = _score_negatives(args, predictor, threshold)
    if args.json:  # one machine-readable line, after the table
        print(json.dumps(scores))
    return 0


def _score_negatives(args: argparse.Namespace, predictor: Any, threshold: float) -> dict:
    """False candidates on tissue without figures, per region and pooled."""
    from napari_mitosis.detection.negative_tissue import NegativeRegion, score_negative_regions

    regions = [NegativeRegion.parse(text) for text in args.negatives]
    rates = score_negative_regions(
        regions, predictor, threshold=threshold, overlap=args.overlap, batch_size=args.batch_size
    )
    for row in rates["regions"]:
        print(
            f"{row['region']}: {int(row['false_candidates'])} false candidates on "
            f"{row['tissue_mm2']:.3f} mm² of tissue: {row['per_mm2']:.1f} per mm², "
            f"{row['per_hpf']:.2f} per HPF"
        )
    print(
        f"negative tissue: {rates['per_mm2']:.1f} false candidates per mm², "
        f"{rates['per_hpf']:.2f} per HPF (0.237 mm²)"
    )
    return rates


def register(command: CommandAdder) -> None:
    """Add ``convert-icpr2014``, ``train-detector``, ``detect`` and ``evaluate-detector``."""
    c14 = command("convert-icpr2014", "ICPR 2014 centroid CSVs → QuPath GeoJSON points")
    c14.add_argument("folder", type=Path, help="images with a same-name centroid .csv beside each")
    c14.add_argument("--out", type=Path, required=True, help="output folder")
    add_overwrite(c14)
    c14.set_defaults(run=_convert_icpr2014)

    td = command(
        "train-detector", "train the Faster R-CNN mitosis detector on images + boxes, or a slide"
    )
    td.add_argument(
        "images",
        type=Path,
        help="folder of high-power fields, or a slide (with --annotations FILE.geojson)",
    )
    where = td.add_mutually_exclusive_group()
    where.add_argument(
        "--annotations",
        type=Path,
        help="folder of <image stem>.boxes.csv or .geojson (default: beside the images); "
        "for a slide, its GeoJSON (QuPath points or boxes, or a reviewed GeoJSON)",
    )
    add_coco_options(td, where)
    where.add_argument(
        "--centred-crops",
        action="store_true",
        help="the folder holds class sub-folders of crops, each with one figure at its "
        "centre (labels.csv optional: split by slide); each gets a --box-um box there",
    )
    td.add_argument(
        "--box-um", type=float, default=12.0, help="centred crops and points: box side (µm)"
    )
    td.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    td.add_argument(
        "--backbone",
        choices=("auto", *BACKBONES),
        default="auto",
        help="auto: resnet50_v2 on a GPU, mobilenet_v3 on CPU",
    )
    add_steps(td, crop=256)
    td.add_argument("--distance-um", type=float, default=8.0, help="hit radius for validation")
    td.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    td.add_argument("--init", help="a detector to fine-tune: a checkpoint or a registered name")
    td.add_argument(
        "--backbone-weights",
        "--pretrained",
        dest="backbone_weights",
        help="classification weights for the backbone: a local file, or a torchvision "
        "weights name (downloaded and cached when online)",
    )
    td.add_argument("--notes", default="", help="provenance written into the model card")
    td.add_argument(
        "--negatives",
        nargs="+",
        metavar="SLIDE[@y0,x0,y1,x1]",
        help="real tissue with no mitotic figure (slides, or level-0 regions of them): "
        "crops on its nuclei and on mined candidates teach what is not a mitosis",
    )
    td.add_argument(
        "--negative-fraction", type=float, default=0.3, help="share of crops from --negatives"
    )
    td.add_argument(
        "--negative-val-fraction",
        type=float,
        default=0.25,
        help="share of the --negatives' nuclei (a column strip) held out for validation",
    )
    td.add_argument(
        "--mine-threshold",
        type=float,
        default=0.2,
        help="score at which a candidate on --negatives becomes a hard negative",
    )
    td.add_argument(
        "--negative-mm2-per-figure",
        type=float,
        default=0.237,
        help="tissue (mm²) each validation figure stands for: false candidates on the "
        "held-out --negatives count as if it covered that much (0: count each once)",
    )
    td.add_argument(
        "--crop-negatives",
        action="store_true",
        help="centred crops: also centre crops on each crop's other nuclei (hard negatives)",
    )
    add_stain(td)
    add_recipe(td, "train-detector")
    add_training(td, batch=4, lr=2e-4)
    td.set_defaults(run=_train_detector)

    dt = command("detect", "detect mitoses in an image or slide (boxes + scores)")
    dt.add_argument("image", type=Path, help=IMAGE_HELP)
    add_model(dt, "detector")
    dt.add_argument("--out", type=Path, required=True, help="output folder")
    dt.add_argument("--region", help="y0,x0,y1,x1 in level-0 pixels (default: whole image)")
    dt.add_argument(
        "--hotspot-from",
        metavar="MODEL",
        help="run a fast detector over the tissue first and --model only on the 10-HPF "
        "square where its candidates are densest (a heavy model on a CPU)",
    )
    dt.add_argument("--tissue-only", action="store_true", help="skip tiles without tissue")
    dt.add_argument(
        "--min-tissue", type=float, default=0.05, help="with --tissue-only: tissue fraction"
    )
    dt.add_argument("--threshold", type=float, default=None, help="score (default: the card's)")
    add_mpp(dt)
    add_tiling(dt, batch=4)
    add_device_tiles(dt)
    add_candidate_classifiers(dt, subtype_flag="--subtype")
    add_device(dt)
    add_overwrite(dt)
    dt.set_defaults(run=_detect)

    ed = command("evaluate-detector", "score a detector against true centroids (MITOS/MIDOG rule)")
    ed.add_argument("images", type=Path, help="folder of test images")
    ed.add_argument(
        "--annotations",
        type=Path,
        help="folder of <stem>.boxes.csv / .geojson / ICPR 2014 .csv (default: beside)",
    )
    add_model(ed, "detector")
    ed.add_argument("--out", type=Path, required=True, help="folder for the table and PR plot")
    add_coco_options(ed)
    ed.add_argument(
        "--radius-um",
        "--distance-um",
        dest="distance_um",
        type=float,
        default=8.0,
        help="a detection within this distance of a true centroid is a hit (8: ICPR's "
        "rule; MIDOG's is 7.5)",
    )
    ed.add_argument("--threshold", type=float, default=None, help="score (default: the card's)")
    ed.add_argument("--json", action="store_true", help="end with the scores as one JSON line")
    ed.add_argument(
        "--centred-crops",
        action="store_true",
        help="the folder holds class sub-folders of crops, each with one figure at its centre: "
        "recall of that figure and false positives per crop",
    )
    ed.add_argument(
        "--mpp",
        type=float,
        help="µm per pixel of images that do not say (default: the model card's, the "
        "resolution it was trained at)",
    )
    ed.add_argument(
        "--negatives",
        nargs="+",
        metavar="SLIDE[@y0,x0,y1,x1]",
        help="real tissue with no mitotic figure: every candidate there is false (per mm² "
        "of tissue and per HPF; also in --json)",
    )
    add_tiling(ed, batch=4)
    add_device(ed)
    add_overwrite(ed)
    ed.set_defaults(run=_evaluate_detector)
