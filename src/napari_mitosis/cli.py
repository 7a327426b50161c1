"""The ``napari-mitosis`` command line: every step works without a napari window."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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

    run_demo(Path(args.out), headless=args.headless, models=args.models, workers=args.workers)
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


def _detection_fields(args: argparse.Namespace) -> list[Any]:
    from napari_mitosis.mitosis_datasets import boxed_fields, coco_fields

    if args.coco is not None:
        return coco_fields(args.coco, args.images)
    return boxed_fields(args.images, args.annotations)


def _train_detector(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.detection_training import DetectorTraining, train_detector
    from napari_mitosis.detections import Detections
    from napari_mitosis.tiled_inference import pick_device

    fields = _detection_fields(args)
    if len(fields) < 2:
        raise ValueError(f"{args.images}: need at least 2 annotated images (train + validation)")
    order = np.random.default_rng(args.seed).permutation(len(fields))
    n_val = max(1, round(len(fields) * args.val_fraction))
    known = [f.mpp[1] for f, _ in fields if f.mpp]
    mpp = float(np.median(known)) if known else args.mpp
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
        notes=args.notes,
    )
    train = [(fields[i][0].image, fields[i][1]) for i in order[n_val:]]
    validation = [(fields[i][0].image, Detections(fields[i][1]).centres) for i in order[:n_val]]
    print(
        f"{len(train)} training and {len(validation)} validation images at {mpp:g} µm/px; "
        f"{backbone} backbone"
    )
    report = train_detector(
        train,
        validation,
        args.out,
        config,
        overwrite=args.overwrite,
        progress=lambda s, n, r: print(
            f"step {s}/{n}: loss {r['train_loss']:.3f}  validation F1 {r['val_f1']:.3f} "
            f"(P {r['val_precision']:.3f}, R {r['val_recall']:.3f})",
            flush=True,
        ),
    )
    print(f"best validation F1 {report.best_f1:.3f} at step {report.best_step} → {args.out}")
    return 0


def _detect(args: argparse.Namespace) -> int:
    from napari_mitosis.detection import detect_slide

    outputs = [args.out / f"{args.image.stem}.mitoses{x}" for x in (".geojson", ".csv")]
    refuse_existing(outputs, overwrite=args.overwrite)
    result = detect_slide(
        args.image,
        args.model,
        region=_region(args.region),
        device=args.device,
        tissue_only=args.tissue_only,
        min_tissue=args.min_tissue,
        score_threshold=args.threshold,
        overlap=args.overlap,
        batch_size=args.batch_size,
    )
    _write_boxes(result.detections, outputs, args.overwrite)
    print(f"{args.image}: {result.summary()}")
    for path in outputs:
        print(f"  {path}")
    return 0


def _write_boxes(detections: Any, outputs: list[Path], overwrite: bool) -> None:
    from napari_mitosis.detections import write_detections_csv
    from napari_mitosis.geojson import write_geojson

    outputs[0].parent.mkdir(parents=True, exist_ok=True)
    write_geojson(outputs[0], detections.to_annotations(), overwrite=overwrite)
    write_detections_csv(outputs[1], detections, overwrite=overwrite)


def _evaluate_detector(args: argparse.Namespace) -> int:
    from napari_mitosis.checkpoint import load_checkpoint
    from napari_mitosis.detection import detect_array
    from napari_mitosis.detection_evaluation import (
        evaluate_detections,
        write_evaluation_csv,
        write_pr_plot,
    )
    from napari_mitosis.detector import DetectionPredictor
    from napari_mitosis.mitosis_datasets import centroid_fields

    table, plot = args.out / "evaluation.csv", args.out / "precision_recall.png"
    refuse_existing((table, plot), overwrite=args.overwrite)
    model, card = load_checkpoint(args.model, task="detection")
    predictor = DetectionPredictor(model, card, args.device)
    fields = centroid_fields(args.images, args.annotations)
    scored = []
    for field, truth in fields:
        mpp = field.mpp or ((card.mpp, card.mpp) if card.mpp else None)
        found = detect_array(
            field.image,
            predictor,
            overlap=args.overlap,
            batch_size=args.batch_size,
            mpp=mpp,
            score_threshold=0.0,
        )
        scored.append((field.image_path.name, found, truth, mpp[1] if mpp else None))
    threshold = card.threshold if args.threshold is None else args.threshold
    evaluation = evaluate_detections(scored, threshold=threshold, distance_um=args.distance_um)
    for f in evaluation.fields:
        print(f"{f.name}: TP {f.tp}  FP {f.fp}  FN {f.fn}")
    print(evaluation.summary())
    args.out.mkdir(parents=True, exist_ok=True)
    write_evaluation_csv(table, evaluation, overwrite=args.overwrite)
    write_pr_plot(plot, evaluation, overwrite=args.overwrite)
    print(f"  {table}\n  {plot}")
    return 0


def _classifier_config(args: argparse.Namespace, **fixed: Any) -> Any:
    from napari_mitosis.classification_training import ClassifierTraining

    return ClassifierTraining(
        architecture=args.architecture,
        tower=args.tower,
        width=args.width,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimiser=args.optimiser,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        class_weights=not args.no_class_weights,
        monitor=args.monitor,
        patience=args.patience,
        brightness=args.brightness,
        contrast=args.contrast,
        saturation=args.saturation,
        hue=args.hue,
        seed=args.seed,
        device=args.device,
        notes=args.notes,
        **fixed,
    )


def _print_epoch(epoch: int, total: int, r: dict[str, float]) -> None:
    print(
        f"epoch {epoch}/{total}: loss {r['train_loss']:.3f}  validation AUC {r['val_auc']:.3f}  "
        f"F1 {r['val_f1']:.3f}  F_med {r['val_f_med']:.3f}  ({r['seconds']:.0f} s)",
        flush=True,
    )


def _train_classifier(args: argparse.Namespace) -> int:
    if args.annotations is not None:
        return _train_classifier_on_slides(args)
    if len(args.data) != 1 or not args.data[0].is_dir():
        raise ValueError(
            "give one folder with a sub-folder per class, or slides with --annotations"
        )
    import numpy as np

    from napari_mitosis.classification_data import class_folders, describe, split_by_group
    from napari_mitosis.classification_training import train_classifier

    folder = class_folders(args.data[0], tuple(args.classes) if args.classes else None)
    if len(folder.classes) != 2:
        raise ValueError(
            f"{args.data[0]}: training needs exactly two classes, found {folder.classes}"
        )
    test_path, roc_path = args.out.with_suffix(".test.csv"), args.out.with_suffix(".roc.png")
    refuse_existing(
        (args.out, args.out.with_suffix(".csv"), test_path, roc_path), overwrite=args.overwrite
    )
    print(f"{args.data[0]}: {describe(folder)}")
    everything = np.arange(len(folder.paths))
    rest, test = (everything, everything[:0])
    if args.test_fraction > 0:
        rest, test = split_by_group(
            folder.labels, folder.groups, fraction=args.test_fraction, seed=args.seed
        )
        rest, test = everything[rest], everything[test]
    fit, val = split_by_group(
        folder.labels[rest], folder.groups[rest], fraction=args.val_fraction, seed=args.seed + 1
    )
    fit, val = rest[fit], rest[val]
    images = folder.load(args.input_size, centre_crop=args.centre_crop)
    size = images.shape[1]
    print(
        f"{len(fit)} training, {len(val)} validation, {len(test)} test images ({size} px), "
        f"split by {'slide' if len(np.unique(folder.groups)) < len(folder.paths) else 'image'}"
    )
    config = _classifier_config(
        args, input_size=size, classes=folder.classes, mpp=args.mpp, centre_crop=args.centre_crop
    )
    report = train_classifier(
        (images[fit], folder.labels[fit]),
        (images[val], folder.labels[val]),
        args.out,
        config,
        overwrite=args.overwrite,
        progress=_print_epoch,
    )
    print(f"best validation {args.monitor} {report.best_value:.3f} at epoch {report.best_epoch}")
    if len(test):
        _evaluate_folder_subset(args, args.out, folder, images, test, test_path, roc_path)
    return 0


def _evaluate_folder_subset(
    args: argparse.Namespace,
    model_path: Path,
    folder: Any,
    images: Any,
    subset: Any,
    table: Path,
    plot: Path,
) -> None:
    """Score ``subset`` of a class-folder data set; print metrics, write scores + ROC."""
    import numpy as np

    from napari_mitosis.checkpoint import load_checkpoint
    from napari_mitosis.classification import ClassifierPredictor, classify_images
    from napari_mitosis.classification_metrics import binary_metrics, write_roc_plot

    model, card = load_checkpoint(model_path, task="classification")
    predictor = ClassifierPredictor(model, card, args.device, tta=getattr(args, "tta", False))
    scores = classify_images(images[subset], predictor)
    threshold = getattr(args, "threshold", None)
    threshold = card.threshold if threshold is None else threshold
    labels = folder.labels[subset]
    metrics = binary_metrics(labels, scores, threshold)
    groups = len(np.unique(folder.groups[subset]))
    print(f"held-out: {len(subset)} images from {groups} groups\n{metrics.summary()}")
    with atomic_output(table, overwrite=args.overwrite) as tmp, tmp.open("w", newline="") as f:
        f.write("file,group,label,score\n")
        for i, score in zip(subset, scores, strict=True):
            label = folder.classes[folder.labels[i]]
            f.write(f"{folder.paths[i]},{folder.groups[i]},{label},{score:.6f}\n")
    title = f"{card.architecture}: {' vs '.join(card.classes)}"
    write_roc_plot(plot, labels, scores, metrics, title=title, overwrite=args.overwrite)
    print(f"  {table}\n  {plot}")


def _train_classifier_on_slides(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.classification_data import annotation_for, slide_patches, tumour_mask
    from napari_mitosis.classification_training import train_classifier
    from napari_mitosis.slide import open_slide

    pairs = [(path, annotation_for(path, args.annotations)) for path in args.data]
    if len(pairs) < 2:
        raise ValueError("slide training needs at least two annotated slides (split by slide)")
    refuse_existing((args.out, args.out.with_suffix(".csv")), overwrite=args.overwrite)
    rng = np.random.default_rng(args.seed)
    size = args.input_size or 96
    order = rng.permutation(len(pairs))
    n_val = max(1, round(len(pairs) * args.val_fraction))
    sets: dict[str, list] = {"train": [], "val": []}
    mpp = None
    for rank, index in enumerate(order):
        slide_path, annotation = pairs[index]
        slide = open_slide(slide_path)
        level = slide.level_for_mpp(args.mpp) if args.level is None else args.level
        mpp = slide.level_mpp(level)[1] if slide.mpp else None
        patches = slide_patches(
            slide,
            tumour_mask(slide, annotation),
            level=level,
            patch=size,
            window=args.window or size // 2,
            per_class=args.per_class,
            min_tissue=args.min_tissue,
            context=args.context,
            rng=rng,
        )
        sets["val" if rank < n_val else "train"].append(patches)
        print(f"{slide_path.name}: {len(patches[1])} patches at level {level}")
    joined = {
        k: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v]))
        for k, v in sets.items()
    }
    config = _classifier_config(
        args,
        input_size=args.input_size,
        classes=("normal", "tumour"),
        mpp=mpp,
        context=args.context,
    )
    report = train_classifier(
        joined["train"],
        joined["val"],
        args.out,
        config,
        overwrite=args.overwrite,
        progress=_print_epoch,
    )
    print(
        f"best validation {args.monitor} {report.best_value:.3f} at epoch {report.best_epoch} → {args.out}"
    )
    return 0


def _evaluate_on_slides(args: argparse.Namespace) -> int:
    """Cell-level metrics against the tumour annotations, and the Camelyon16 FROC."""
    import numpy as np

    from napari_mitosis.classification import classify_slide
    from napari_mitosis.classification_data import annotation_for, tumour_mask
    from napari_mitosis.classification_metrics import binary_metrics, write_roc_plot
    from napari_mitosis.froc import froc, heatmap_candidates, lesions_from_mask
    from napari_mitosis.slide import open_slide

    table, plot = args.out / "evaluation.csv", args.out / "roc.png"
    refuse_existing((table, plot), overwrite=args.overwrite)
    labels, scores, per_slide, rows = [], [], [], ["slide,cells,tumour_cells,lesions,candidates"]
    for path in args.data:
        slide = open_slide(path)
        tumour = tumour_mask(slide, annotation_for(path, args.annotations))
        result = classify_slide(path, args.model, device=args.device, tta=args.tta)
        cells = np.argwhere(result.visited)
        centres = (cells + 0.5) * result.cell_level0 + np.asarray(result.origin_level0)
        truth = tumour.mask[
            np.clip(
                (centres[:, 0] / tumour.downsample[0]).astype(int), 0, tumour.mask.shape[0] - 1
            ),
            np.clip(
                (centres[:, 1] / tumour.downsample[1]).astype(int), 0, tumour.mask.shape[1] - 1
            ),
        ]
        labels.append(truth)
        scores.append(np.asarray(result.heatmap)[result.visited])
        lesions = lesions_from_mask(tumour, slide.mpp[1] if slide.mpp else None)
        points, probs = heatmap_candidates(result)
        per_slide.append((points, probs, lesions))
        rows.append(f"{path.name},{len(cells)},{int(truth.sum())},{lesions.counted},{len(probs)}")
    threshold = args.threshold if args.threshold is not None else result.threshold
    y, p = np.concatenate(labels).astype(int), np.concatenate(scores)
    metrics = binary_metrics(y, p, threshold)
    curve = froc(per_slide)
    print(f"cells of {len(args.data)} slides: {metrics.summary()}")
    rates = "  ".join(
        f"{r:g}: {s:.3f}" for r, s in zip((0.25, 0.5, 1, 2, 4, 8), curve.at_rates, strict=True)
    )
    print(f"FROC {curve.score:.3f} (sensitivity at FPs per slide {rates})")
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(table, overwrite=args.overwrite) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    write_roc_plot(plot, y, p, metrics, title="tumour cells", overwrite=args.overwrite)
    print(f"  {table}\n  {plot}")
    return 0


def _evaluate_classifier(args: argparse.Namespace) -> int:
    import numpy as np

    from napari_mitosis.checkpoint import read_card
    from napari_mitosis.classification_data import class_folders

    if args.annotations is not None:
        return _evaluate_on_slides(args)
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
    table, plot = args.out / "evaluation.csv", args.out / "roc.png"
    refuse_existing((table, plot), overwrite=args.overwrite)
    args.out.mkdir(parents=True, exist_ok=True)
    images = folder.load(card.input_size, centre_crop=card.centre_crop)
    _evaluate_folder_subset(args, args.model, folder, images, subset, table, plot)
    return 0


def _classify(args: argparse.Namespace) -> int:
    from napari_mitosis.classification import classify_slide, heatmap_paths, write_heatmap

    stem = args.image.stem
    refuse_existing(heatmap_paths(args.out, stem, args.format), overwrite=args.overwrite)
    result = classify_slide(
        args.image,
        args.model,
        region=_region(args.region),
        stride=args.stride,
        device=args.device,
        tissue_only=not args.all_tiles,
        min_tissue=args.min_tissue,
        threshold=args.threshold,
        tta=args.tta,
        amp=not args.no_amp,
        batch_size=args.batch_size,
    )
    paths = write_heatmap(result, args.out, stem, fmt=args.format, overwrite=args.overwrite)
    area = result.tumour_area_mm2()
    print(
        f"{args.image}: {int(result.visited.sum())} of {result.visited.size} cells classified at "
        f"level {result.level}; tumour {int(result.mask.sum())} cells"
        + (f" = {area:.3f} mm²" if area is not None else "")
    )
    for path in paths:
        print(f"  {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from napari_mitosis.cohort import read_run_config, run_cohort, settings_from_checkpoints

    options = {
        "detect_in": args.detect_in,
        "detect_tile": args.detect_tile,
        "heatmap_format": args.heatmap_format,
        "device": args.device,
    }
    configs = [m for m in args.models if m.suffix.lower() in (".yaml", ".yml", ".toml")]
    if configs and len(args.models) > 1:
        raise ValueError("give either one run config or model checkpoints, not both")
    if configs:
        settings = read_run_config(configs[0], **options)
    else:
        settings = settings_from_checkpoints(
            args.models, **{k: v for k, v in options.items() if v is not None}
        )
    from napari_mitosis.cohort_progress import cohort_progress

    with cohort_progress(quiet=args.no_progress) as on_event:
        report = run_cohort(
            args.slides,
            settings,
            args.out,
            scheduler=args.scheduler,
            workers=args.workers,
            overwrite=args.overwrite,
            on_event=on_event,
        )
    done = len(report.rows) - len(report.failed)
    print(f"{done} of {len(report.rows)} slides done ({len(report.skipped)} from an earlier run)")
    for row in report.failed:
        print(f"  failed: {row['path']}: {row.get('error')}", file=sys.stderr)
    print(f"summary: {report.summary}")
    return 1 if report.failed else 0


# Choices spelled out here so `--help` and every command start without importing torch
# (tests check they equal the core's own lists).
BACKBONES = ("mobilenet_v3", "resnet50_v2", "vgg16")
ARCHITECTURES = ("small_cnn", "wide_resnet", "inception_v3", "two_tower")
MONITORED = ("auc", "f1", "f_med", "loss")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` gives each option's default after its help, except where there is none to
    give (None, off flags, empty lists) or the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        nothing = default is None or default is False or default in ((), "")
        if nothing or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


IMAGE_HELP = "a slide (SVS, NDPI, MRXS, pyramidal TIFF…) or a plain image (PNG, JPEG, TIFF)"


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (the GPU when PyTorch sees one, else the CPU), cuda, cuda:N or cpu",
    )


def _add_overwrite(parser: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {what} (default: stop, touch nothing)"
    )


def _add_model(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help=f"{task} checkpoint (.safetensors); its model card gives the input size and µm/px",
    )


def _add_training(parser: argparse.ArgumentParser, *, batch: int, lr: float) -> None:
    """Options every trainer shares (seeded split, batch, learning rate, device, overwrite)."""
    parser.add_argument("--batch-size", type=int, default=batch, help="examples per step")
    parser.add_argument("--lr", type=float, default=lr, help="learning rate")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the data held out for validation (early stopping, the kept checkpoint)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, sampling and initial weights"
    )
    _add_device(parser)
    _add_overwrite(parser, "an existing checkpoint")


def _add_steps(parser: argparse.ArgumentParser, *, crop: int) -> None:
    """Step-based training (U-Net, detector): how long, how often to validate, when to stop."""
    parser.add_argument("--steps", type=int, default=2000, help="most training steps")
    parser.add_argument(
        "--eval-every", type=int, default=100, help="validate every N steps, keep the best"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many validations without improvement",
    )
    parser.add_argument("--crop", type=int, default=crop, help="training crop side (px)")


def _add_tiling(parser: argparse.ArgumentParser, *, batch: int) -> None:
    parser.add_argument(
        "--overlap", type=int, default=64, help="px shared by neighbouring tiles (stitched)"
    )
    parser.add_argument("--batch-size", type=int, default=batch, help="tiles per forward pass")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-mitosis",
        description="Whole-slide breast-cancer histopathology: slides, mitoses, tumour maps.",
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=summary, formatter_class=_HelpFormatter
        )

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

    sample = command("sample", "write a synthetic H&E slide with known mitoses")
    sample.add_argument("out", type=Path, help="the slide to write (pyramidal TIFF)")
    sample.add_argument("--width", type=int, default=6144, help="px")
    sample.add_argument("--height", type=int, default=4096, help="px")
    sample.add_argument("--mpp", type=float, default=0.25, help="µm per pixel")
    sample.add_argument("--seed", type=int, default=0, help="another seed, another slide")
    _add_overwrite(sample, "an existing file")
    sample.set_defaults(run=_sample)

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

    c12 = command("convert-icpr2012", "ICPR 2012 pixel CSVs → label masks, boxes, COCO RLE")
    c12.add_argument("folder", type=Path, help="images with a same-name .csv beside each")
    c12.add_argument("--out", type=Path, required=True, help="output folder")
    c12.add_argument("--min-area", type=int, default=0, help="smallest box kept (pixels)")
    _add_overwrite(c12)
    c12.set_defaults(run=_convert_icpr2012)

    c14 = command("convert-icpr2014", "ICPR 2014 centroid CSVs → QuPath GeoJSON points")
    c14.add_argument("folder", type=Path, help="images with a same-name centroid .csv beside each")
    c14.add_argument("--out", type=Path, required=True, help="output folder")
    _add_overwrite(c14)
    c14.set_defaults(run=_convert_icpr2014)

    tr = command("train-unet", "train the mitosis U-Net on ICPR 2012-style data")
    tr.add_argument("data", type=Path, help="images with ICPR 2012 .csv annotations beside them")
    tr.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    _add_steps(tr, crop=128)
    tr.add_argument(
        "--loss",
        choices=["dice+bce", "bce", "focal"],
        default="dice+bce",
        help="per-pixel loss; Dice offsets how few pixels are mitosis",
    )
    tr.add_argument("--base-width", type=int, default=32, help="channels of the first level")
    tr.add_argument("--depth", type=int, default=4, help="down-sampling levels")
    tr.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    _add_training(tr, batch=8, lr=1e-3)
    tr.set_defaults(run=_train_unet)

    sg = command("segment", "segment mitoses in an image or slide with a U-Net")
    sg.add_argument("image", type=Path, help=IMAGE_HELP)
    _add_model(sg, "U-Net")
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
    _add_tiling(sg, batch=4)
    _add_device(sg)
    _add_overwrite(sg)
    sg.set_defaults(run=_segment)

    pm = command("pseudo-masks", "U-Net masks around ICPR 2014 centroids → boxes")
    pm.add_argument("folder", type=Path, help="images with a same-name centroid .csv beside each")
    _add_model(pm, "U-Net")
    pm.add_argument("--out", type=Path, required=True, help="output folder")
    pm.add_argument("--radius-um", type=float, default=4.0, help="fallback disc radius (µm)")
    pm.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    _add_device(pm)
    _add_overwrite(pm)
    pm.set_defaults(run=_pseudo_masks)

    td = command("train-detector", "train the Faster R-CNN mitosis detector on images + boxes")
    td.add_argument("images", type=Path, help="folder of high-power fields")
    where = td.add_mutually_exclusive_group()
    where.add_argument(
        "--annotations",
        type=Path,
        help="folder of <image stem>.boxes.csv or .geojson (default: beside the images)",
    )
    where.add_argument("--coco", type=Path, help="one COCO detection JSON for the folder")
    td.add_argument("--out", type=Path, required=True, help="checkpoint (.safetensors)")
    td.add_argument(
        "--backbone",
        choices=("auto", *BACKBONES),
        default="auto",
        help="auto: resnet50_v2 on a GPU, mobilenet_v3 on CPU",
    )
    _add_steps(td, crop=256)
    td.add_argument("--distance-um", type=float, default=8.0, help="hit radius for validation")
    td.add_argument("--mpp", type=float, default=0.25, help="µm/px when the images do not say")
    td.add_argument("--init", type=Path, help="a detector checkpoint to fine-tune")
    td.add_argument("--backbone-weights", type=Path, help="classification weights (local file)")
    td.add_argument("--notes", default="", help="provenance written into the model card")
    _add_training(td, batch=4, lr=2e-4)
    td.set_defaults(run=_train_detector)

    dt = command("detect", "detect mitoses in an image or slide (boxes + scores)")
    dt.add_argument("image", type=Path, help=IMAGE_HELP)
    _add_model(dt, "detector")
    dt.add_argument("--out", type=Path, required=True, help="output folder")
    dt.add_argument("--region", help="y0,x0,y1,x1 in level-0 pixels (default: whole image)")
    dt.add_argument("--tissue-only", action="store_true", help="skip tiles without tissue")
    dt.add_argument(
        "--min-tissue", type=float, default=0.05, help="with --tissue-only: tissue fraction"
    )
    dt.add_argument("--threshold", type=float, default=None, help="score (default: the card's)")
    _add_tiling(dt, batch=4)
    _add_device(dt)
    _add_overwrite(dt)
    dt.set_defaults(run=_detect)

    ed = command("evaluate-detector", "score a detector against true centroids (MITOS/MIDOG rule)")
    ed.add_argument("images", type=Path, help="folder of test images")
    ed.add_argument(
        "--annotations",
        type=Path,
        help="folder of <stem>.boxes.csv / .geojson / ICPR 2014 .csv (default: beside)",
    )
    _add_model(ed, "detector")
    ed.add_argument("--out", type=Path, required=True, help="folder for the table and PR plot")
    ed.add_argument(
        "--distance-um",
        type=float,
        default=8.0,
        help="a detection within this distance of a true centroid is a hit",
    )
    ed.add_argument("--threshold", type=float, default=None, help="score (default: the card's)")
    _add_tiling(ed, batch=4)
    _add_device(ed)
    _add_overwrite(ed)
    ed.set_defaults(run=_evaluate_detector)

    tc = command(
        "train-classifier", "train a tumour/patch classifier on class folders or annotated slides"
    )
    tc.add_argument(
        "data", type=Path, nargs="+", help="a folder with one sub-folder per class, or slides"
    )
    tc.add_argument(
        "--annotations",
        type=Path,
        help="with slides: folder of <slide stem>.xml (ASAP) / .geojson / _mask.png tumour annotations",
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
        "--input-size", type=int, default=None, help="px (folders: the images' own; slides: 96)"
    )
    tc.add_argument("--classes", nargs=2, help="class folder names, negative first")
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
    tc.add_argument("--epochs", type=int, default=30, help="most epochs")
    tc.add_argument(
        "--optimiser", choices=("adam", "sgd"), default="adam", help="sgd: with Nesterov momentum"
    )
    tc.add_argument("--weight-decay", type=float, default=1e-4, help="L2 penalty")
    tc.add_argument(
        "--no-class-weights",
        action="store_true",
        help="weigh every example alike (default: inverse class frequency)",
    )
    tc.add_argument("--monitor", choices=MONITORED, default="auc", help="early-stopping metric")
    tc.add_argument(
        "--patience", type=int, default=5, help="stop after this many epochs without improvement"
    )
    tc.add_argument("--test-fraction", type=float, default=0.2, help="folders: held-out test share")
    tc.add_argument("--notes", default="", help="provenance written into the model card")
    _add_training(tc, batch=32, lr=1e-3)
    tc.set_defaults(run=_train_classifier)

    ec = command("evaluate-classifier", "AUC, sensitivity, specificity, F_med, ROC plot")
    ec.add_argument(
        "data", type=Path, nargs="+", help="a folder with one sub-folder per class, or slides"
    )
    ec.add_argument(
        "--annotations", type=Path, help="with slides: tumour annotations (as train-classifier)"
    )
    _add_model(ec, "classifier")
    ec.add_argument("--out", type=Path, required=True, help="folder for the metrics and ROC plot")
    ec.add_argument(
        "--split-file", type=Path, help="only the images listed (e.g. <model>.test.csv)"
    )
    ec.add_argument("--threshold", type=float, default=None, help="default: the card's")
    ec.add_argument("--tta", action="store_true", help="average the 8 rotations/flips")
    _add_device(ec)
    _add_overwrite(ec)
    ec.set_defaults(run=_evaluate_classifier)

    cl = command("classify", "tumour heatmap, mask and regions of a slide")
    cl.add_argument("image", type=Path, help=IMAGE_HELP)
    _add_model(cl, "classifier")
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
    cl.add_argument("--tta", action="store_true", help="average the 8 rotations/flips")
    cl.add_argument(
        "--format",
        choices=("tiff", "ome-zarr"),
        default="tiff",
        help="heatmap + mask as two pyramidal TIFFs or one OME-Zarr (mask as its label image)",
    )
    cl.add_argument("--batch-size", type=int, default=16, help="patches per forward pass")
    _add_device(cl)
    cl.add_argument(
        "--no-amp",
        action="store_true",
        help="float32 on CUDA too (slower; the CPU's heatmap within 1e-4, no float16 rounding)",
    )
    _add_overwrite(cl)
    cl.set_defaults(run=_classify)

    rn = command("run", "the whole pipeline on many slides (Dask, local or a cluster), resumable")
    rn.add_argument("slides", nargs="+", type=Path, help="slides, or .txt/.csv lists of them")
    rn.add_argument(
        "--models",
        nargs="+",
        type=Path,
        required=True,
        help="classifier and/or detector checkpoints, or one run config (.yaml/.toml)",
    )
    rn.add_argument("--out", type=Path, required=True, help="results folder")
    rn.add_argument("--scheduler", help="a running Dask scheduler, e.g. tcp://host:8786")
    rn.add_argument("--workers", type=int, help="local cluster processes (default: up to 2)")
    rn.add_argument(
        "--detect-in", choices=("tumour", "tissue"), help="where mitoses are looked for"
    )
    rn.add_argument("--detect-tile", type=int, help="detector tile px (default: its crop)")
    rn.add_argument(
        "--heatmap-format",
        choices=("ome-zarr", "tiff"),
        help="tumour heatmap files (default: the run config's, else OME-Zarr)",
    )
    rn.add_argument(
        "--device",
        help="auto, cuda, cuda:N or cpu, on every worker (default: the run config's, else auto)",
    )
    rn.add_argument("--overwrite", action="store_true", help="redo every slide")
    rn.add_argument("--no-progress", action="store_true", help="no progress bar (logs, batch jobs)")
    rn.set_defaults(run=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (SlideError, OutputExistsError, FileNotFoundError, ValueError) as err:
        print(f"napari-mitosis: error: {err}", file=sys.stderr)
        return 2
