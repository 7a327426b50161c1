"""Tumour classification commands: training, evaluation (class folders or annotated slides), ``classify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_mitosis.cli.options import (
    ARCHITECTURES,
    MONITORED,
    CommandAdder,
    add_device,
    add_model,
    add_mpp,
    add_overwrite,
    add_recipe,
    add_stain,
    add_training,
    add_tta,
    epoch_printer,
    stain_options,
)
from napari_mitosis.io.output_file import atomic_output, refuse_existing


def _classifier_config(args: argparse.Namespace, **fixed: Any) -> Any:
    from napari_mitosis.classification.training import ClassifierTraining

    return ClassifierTraining(
        architecture=args.architecture,
        tower=args.tower,
        width=args.width,
        depth=args.depth,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimiser=args.optimiser,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        ema=args.ema,
        tta=bool(getattr(args, "tta", False)),
        class_weights=not args.no_class_weights,
        monitor=args.monitor or ("auc" if len(fixed["classes"]) == 2 else "f1"),
        patience=args.patience,
        brightness=args.brightness,
        contrast=args.contrast,
        saturation=args.saturation,
        hue=args.hue,
        flips=args.flips,
        crop_scale=args.crop_scale,
        seed=args.seed,
        device=args.device,
        notes=args.notes,
        pretrained=args.pretrained,
        freeze_epochs=args.freeze_epochs,
        backbone_lr_scale=args.backbone_lr_scale,
        init=args.init,
        label_votes=tuple(args.label_votes or ()),
        data_options={k: getattr(args, k) for k in DATA_OPTIONS if hasattr(args, k)},
        **stain_options(args),
        **fixed,
    )


#: the options that choose the examples rather than train on them, kept in the card
DATA_OPTIONS = (
    "test_fraction",
    "val_fraction",
    "folds",
    "per_class",
    "window",
    "min_tissue",
    "min_coverage",
    "level",
)


def _train_split(args: argparse.Namespace, config: Any, train: Any, validation: Any) -> None:
    """One model on (images, labels) pairs, early-stopped on ``validation``; the epoch
    lines and the best epoch printed (folders and slides alike)."""
    from napari_mitosis.classification.training import train_classifier

    report = train_classifier(
        train,
        validation,
        args.out,
        config,
        overwrite=args.overwrite,
        progress=epoch_printer(config.monitor),
    )
    print(
        f"best validation {report.monitor} {report.best_value:.3f} at epoch {report.best_epoch}"
        f" → {args.out}"
    )


def _train_classifier(args: argparse.Namespace) -> int:
    if args.folds < 1:
        raise ValueError(f"--folds must be 1 (one validation split) or more, got {args.folds}")
    if args.annotations is not None:
        if args.folds > 1:
            raise ValueError("--folds trains on class folders; slides use --val-fraction")
        if args.label_votes:
            raise ValueError("--label-votes reads a class folder's labels.csv, not slides")
        from napari_mitosis.cli.classification_slides import train_on_slides

        return train_on_slides(args, _classifier_config, _train_split)
    if len(args.data) != 1 or not args.data[0].is_dir():
        raise ValueError(
            "give one folder with a sub-folder per class, or slides with --annotations"
        )
    import numpy as np

    from napari_mitosis.io.class_folders import class_folders, describe, split_by_group

    folder = class_folders(args.data[0], tuple(args.classes) if args.classes else None)
    if len(folder.classes) < 2:
        raise ValueError(
            f"{args.data[0]}: training needs at least two classes, found {folder.classes}"
        )
    plot = ".roc.png" if len(folder.classes) == 2 else ".confusion.png"
    test_path, roc_path = args.out.with_suffix(".test.csv"), args.out.with_suffix(plot)
    refuse_existing(
        (args.out, args.out.with_suffix(".csv"), test_path, roc_path), overwrite=args.overwrite
    )
    print(f"{args.data[0]}: {describe(folder)}")
    everything = np.arange(len(folder.paths))
    rest, test = (everything, everything[:0])
    if args.test_fraction > 0:
        rest, test = split_by_group(
            folder.labels,
            folder.groups,
            fraction=args.test_fraction,
            seed=args.seed,
            source=f"{args.data[0]} (--test-fraction)",
        )
        rest, test = everything[rest], everything[test]
    targets = None
    if args.label_votes:
        if len(folder.classes) != 2:
            raise ValueError(f"{args.data[0]}: --label-votes needs two classes")
        targets = folder.votes(args.data[0], tuple(args.label_votes))
    images = folder.load(args.input_size, centre_crop=args.centre_crop)
    size = images.shape[1]
    by = "slide" if len(np.unique(folder.groups)) < len(folder.paths) else "image"
    config = _classifier_config(
        args, input_size=size, classes=folder.classes, mpp=args.mpp, centre_crop=args.centre_crop
    )
    if args.folds > 1:
        _train_folds(args, config, images, folder, targets, rest, test, by)
    else:
        fit, val = split_by_group(
            folder.labels[rest],
            folder.groups[rest],
            fraction=args.val_fraction,
            seed=args.seed + 1,
            source=f"{args.data[0]} (--val-fraction)",
        )
        fit, val = rest[fit], rest[val]
        print(
            f"{len(fit)} training, {len(val)} validation, {len(test)} test images ({size} px), "
            f"split by {by}"
        )
        soft = None if targets is None else targets[fit]
        _train_split(
            args,
            config,
            (images[fit], folder.labels[fit], soft),
            (images[val], folder.labels[val]),
        )
    if len(test):
        _evaluate_folder_subset(args, args.out, folder, images, test, test_path, roc_path)
    return 0


def _train_folds(
    args: argparse.Namespace,
    config: Any,
    images: Any,
    folder: Any,
    targets: Any,
    rest: Any,
    test: Any,
    by: str,
) -> None:
    """Cross-validated training on ``rest``: an ensemble of ``--folds`` models."""
    from napari_mitosis.classification.cross_validation import train_cross_validated

    groups = len(set(folder.groups[rest]))
    if groups < args.folds:
        raise ValueError(
            f"{args.data[0]}: {args.folds} folds need at least {args.folds} slides/images "
            f"outside the test split, found {groups}"
        )
    print(
        f"{len(rest)} training images in {args.folds} folds, {len(test)} test images "
        f"({images.shape[1]} px), split by {by}"
    )
    report = train_cross_validated(
        (images[rest], folder.labels[rest], None if targets is None else targets[rest]),
        folder.groups[rest],
        args.out,
        config,
        folds=args.folds,
        overwrite=args.overwrite,
        progress=epoch_printer(config.monitor),
    )
    best = ", ".join(f"{r.best_value:.3f} (epoch {r.best_epoch})" for r in report.members)
    cv = report.card.metrics
    print(f"best validation {report.members[0].monitor} of each fold: {best}")
    print(
        f"cross-validated (out-of-fold) AUC {cv.get('cv_auc', float('nan')):.3f}  "
        f"F1 {cv.get('cv_f1', float('nan')):.3f}  threshold {report.card.threshold:.3f}"
    )


def _evaluate_folder_subset(
    args: argparse.Namespace,
    model_path: Path,
    folder: Any,
    images: Any,
    subset: Any,
    table: Path,
    plot: Path,
) -> Any:
    """Score ``subset`` of a class-folder data set; print metrics, write scores + ROC;
    return the metrics."""
    import numpy as np

    from napari_mitosis.classification.metrics import (
        binary_metrics,
        multiclass_metrics,
        write_confusion_plot,
        write_roc_plot,
    )
    from napari_mitosis.classification.run import ClassifierPredictor, classify_images
    from napari_mitosis.models.checkpoint import load_checkpoint

    model, card = load_checkpoint(model_path, task="classification")
    predictor = ClassifierPredictor(model, card, args.device, tta=getattr(args, "tta", None))
    scores = classify_images(images[subset], predictor)
    labels = folder.labels[subset]
    groups = len(np.unique(folder.groups[subset]))
    title = f"{card.architecture}: {' vs '.join(card.classes)}"
    if scores.ndim == 2:  # K classes: the argmax
        metrics: Any = multiclass_metrics(labels, scores)
        summary = metrics.summary(tuple(card.classes))
        header = ",".join(f"p_{c}" for c in card.classes)
        rows = [",".join(f"{v:.6f}" for v in row) for row in scores]
    else:
        threshold = getattr(args, "threshold", None)
        threshold = card.threshold if threshold is None else threshold
        metrics = binary_metrics(labels, scores, threshold)
        summary, header, rows = metrics.summary(), "score", [f"{v:.6f}" for v in scores]
    print(f"held-out: {len(subset)} images from {groups} groups\n{summary}")
    with atomic_output(table, overwrite=args.overwrite) as tmp, tmp.open("w", newline="") as f:
        f.write(f"file,group,label,{header}\n")
        for i, row in zip(subset, rows, strict=True):
            label = folder.classes[folder.labels[i]]
            f.write(f"{folder.paths[i]},{folder.groups[i]},{label},{row}\n")
    if scores.ndim == 2:
        write_confusion_plot(plot, labels, scores, card.classes, title=title,
                             overwrite=args.overwrite)  # fmt: skip
    else:
        write_roc_plot(plot, labels, scores, metrics, title=title, overwrite=args.overwrite)
    print(f"  {table}\n  {plot}")
    return metrics


def _evaluate_classifier(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.io.class_folders import class_folders
    from napari_mitosis.models.checkpoint import read_card

    if args.annotations is not None:
        from napari_mitosis.cli.classification_slides import evaluate_on_slides

        return evaluate_on_slides(args)
    if len(args.data) != 1:
        raise ValueError("give one class folder, or slides with --annotations")
    args.data = args.data[0]
    card = read_card(args.model)
    folder = class_folders(args.data, tuple(card.classes))
    subset = np.arange(len(folder.paths))
    if args.split_file is not None:
        with args.split_file.open() as handle:
            listed = {line.split(",")[0] for line in handle.read().splitlines()[1:]}
        subset = np.asarray([i for i, p in enumerate(folder.paths) if str(p) in listed])
        if not len(subset):
            raise ValueError(f"{args.split_file}: lists none of the images in {args.data}")
    plot = args.out / ("roc.png" if len(card.classes) == 2 else "confusion.png")
    table = args.out / "evaluation.csv"
    refuse_existing((table, plot), overwrite=args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    images = folder.load(card.input_size, centre_crop=card.centre_crop)
    metrics = _evaluate_folder_subset(args, args.model, folder, images, subset, table, plot)
    if args.json:  # one machine-readable line, after the table
        print(json.dumps(metrics.as_dict()))
    return 0


def register(command: CommandAdder) -> None:
    """Add ``train-classifier``, ``evaluate-classifier`` and ``classify``."""
    tc = command(
        "train-classifier", "train a tumour/patch classifier on class folders or annotated slides"
    )
    tc.add_argument(
        "data", type=Path, nargs="+", help="a folder with one sub-folder per class, or slides"
    )
    tc.add_argument(
        "--annotations",
        type=Path,
        help="with slides: a folder of <slide stem>.xml (ASAP) / .geojson / _mask.png / "
        ".labels.tif annotations, or one slide's file (held out by region)",
    )
    tc.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    tc.add_argument(
        "--architecture",
        choices=ARCHITECTURES,
        default="small_cnn",
        help="two_tower: the patch and a same-size context patch at lower magnification",
    )
    tc.add_argument(
        "--tower",
        choices=("small_cnn", "wide_resnet", "inception_v3"),
        default="small_cnn",
        help="two_tower: the network in each tower",
    )
    tc.add_argument("--width", type=int, default=32, help="small_cnn channel width")
    tc.add_argument(
        "--depth",
        type=int,
        default=4,
        help="small_cnn conv blocks; each more one doubles the span it sees (38 px at 4)",
    )
    tc.add_argument(
        "--input-size", type=int, default=None, help="px (folders: the images' own; slides: 96)"
    )
    tc.add_argument(
        "--classes",
        nargs="+",
        help="folders: the class sub-folders to use, negative first; slides: the classes of "
        "the annotation's polygons (or labels 1…K), for a K-class model (default: tumour "
        "against the rest of the tissue)",
    )
    tc.add_argument(
        "--min-coverage",
        type=float,
        default=0.5,
        help="slides with --classes: least share of a cell its class must cover",
    )
    tc.add_argument("--level", type=int, default=None, help="slides: pyramid level of the patches")
    tc.add_argument(
        "--mpp", type=float, default=None, help="slides: µm/px of the patches (picks the level)"
    )
    tc.add_argument(
        "--window", type=int, default=None, help="slides: centre window px (default: input/2)"
    )
    tc.add_argument(
        "--per-class", type=int, default=500, help="slides: patches per class per slide"
    )
    tc.add_argument(
        "--min-tissue", type=float, default=0.3, help="slides: least tissue in a sampled patch"
    )
    tc.add_argument(
        "--context", type=float, default=None, help="two_tower: context magnification factor"
    )
    tc.add_argument(
        "--centre-crop", type=int, default=None, help="folders: keep the central N px of each image"
    )
    tc.add_argument(
        "--brightness", type=float, default=64 / 255, help="colour jitter (default: 64/255)"
    )
    tc.add_argument("--contrast", type=float, default=0.75, help="colour jitter")
    tc.add_argument("--saturation", type=float, default=0.25, help="colour jitter")
    tc.add_argument("--hue", type=float, default=0.04, help="colour jitter")
    tc.add_argument(
        "--flips",
        choices=("dihedral", "horizontal"),
        default="dihedral",
        help="dihedral: the 8 rotations/flips (histology); horizontal: left-right only "
        "(images with an up, e.g. ultrasound)",
    )
    tc.add_argument(
        "--crop-scale",
        type=float,
        default=1.0,
        help="random crops of at least this share of the area, resized back (1: none)",
    )
    tc.add_argument(
        "--pretrained",
        help="start from these weights: a torchvision weights name (e.g. "
        "ResNet18_Weights.IMAGENET1K_V1, downloaded and cached when online) or a local "
        "state-dict file (.safetensors, or .pt/.pth read without running code); the card "
        "records it and switches to ImageNet normalisation",
    )
    tc.add_argument(
        "--freeze-epochs",
        type=int,
        default=0,
        help="with --pretrained: epochs that train the last layer only",
    )
    tc.add_argument(
        "--backbone-lr-scale",
        type=float,
        default=1.0,
        help="all but the last layer learn at --lr × this (fine-tuning: e.g. 0.1)",
    )
    tc.add_argument(
        "--init",
        help="a classifier to fine-tune (a checkpoint or a registered name): its network, "
        "input size, µm/px and normalisation, with a new last layer for other classes",
    )
    add_stain(tc)
    add_recipe(tc, "train-classifier")
    tc.add_argument("--epochs", type=int, default=30, help="most epochs")
    tc.add_argument(
        "--optimiser", choices=("adam", "sgd"), default="adam", help="sgd: with Nesterov momentum"
    )
    tc.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty")
    tc.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning rate over the epochs: constant, or cosine annealing to 0 by --epochs",
    )
    tc.add_argument(
        "--tta",
        action="store_true",
        help="the model runs with its flips averaged: the threshold, out-of-fold and test "
        "scores are taken so, and so is every prediction from its card unless --no-tta",
    )
    tc.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="validate and keep a moving average of the weights, e.g. 0.99 per step (0: off)",
    )
    tc.add_argument(
        "--no-class-weights",
        action="store_true",
        help="weigh every example alike (default: inverse class frequency)",
    )
    tc.add_argument(
        "--monitor",
        choices=MONITORED,
        default=None,
        help="early-stopping metric (default: auc for two classes, macro f1 for more)",
    )
    tc.add_argument(
        "--patience", type=int, default=5, help="stop after this many epochs without improvement"
    )
    tc.add_argument("--test-fraction", type=float, default=0.2, help="folders: held-out test share")
    tc.add_argument(
        "--folds",
        type=int,
        default=1,
        help="folders: train this many models by cross-validation (each early-stopped on "
        "its own fold of whole slides/images, instead of --val-fraction) and save their "
        "ensemble, its threshold chosen on every out-of-fold score",
    )
    tc.add_argument(
        "--label-votes",
        nargs="+",
        metavar="COLUMN",
        help="folders, two classes: labels.csv columns, each one annotator's yes/no for the "
        "positive class; training targets their share (soft labels), while validation, "
        "the threshold and the test split keep the class folders",
    )
    tc.add_argument("--notes", default="", help="provenance written into the model card")
    add_training(tc, batch=32, lr=1e-3)
    tc.set_defaults(run=_train_classifier)

    ec = command("evaluate-classifier", "AUC, sensitivity, specificity, F_med, ROC plot")
    ec.add_argument(
        "data", type=Path, nargs="+", help="a folder with one sub-folder per class, or slides"
    )
    ec.add_argument(
        "--annotations", type=Path, help="with slides: tumour annotations (as train-classifier)"
    )
    add_model(ec, "classifier")
    ec.add_argument("--out", type=Path, required=True, help="folder for the metrics and ROC plot")
    ec.add_argument(
        "--split-file", type=Path, help="only the images listed (e.g. <model>.test.csv)"
    )
    ec.add_argument("--threshold", type=float, default=None, help="default: the card's")
    add_tta(ec)
    ec.add_argument("--json", action="store_true", help="end with the metrics as one JSON line")
    add_mpp(ec)
    add_device(ec)
    add_overwrite(ec)
    ec.set_defaults(run=_evaluate_classifier)
