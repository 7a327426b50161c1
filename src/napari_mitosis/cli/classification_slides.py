"""Classifier commands on whole slides with annotations: training (tumour outlines or
per-class regions; one slide held out by region, several by slide) and evaluation
(tumour cells and the Camelyon16 FROC, or a K-class model's cells against class regions)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from napari_mitosis.cli.options import slide_provenance
from napari_mitosis.io.output_file import atomic_output, refuse_existing


def _slide_cells(args: argparse.Namespace, slide: Any, annotation: Path) -> tuple[Any, Any]:
    """The cells of a slide at the patches' level and their classes (−1: none): from
    per-class regions with ``--classes``, else tumour against the rest of the tissue."""
    from napari_mitosis.classification.data import tumour_cells, tumour_mask
    from napari_mitosis.classification.slide_regions import cell_classes, cell_grid, class_regions

    level = slide.level_for_mpp(args.mpp) if args.level is None else args.level
    window = args.window or (args.input_size or 96) // 2
    if args.classes:
        regions = class_regions(slide, annotation, args.classes)
        grid = cell_grid(slide, level, window)
        return grid, cell_classes(grid, regions, args.min_coverage)
    tumour = tumour_mask(slide, annotation)
    return tumour_cells(slide, tumour, level=level, window=window, min_tissue=args.min_tissue)


def _annotated_slides(args: argparse.Namespace) -> list[tuple[Path, Path]]:
    """(slide, annotation) pairs: one file for one slide, or a folder of them by stem."""
    from napari_mitosis.classification.data import annotation_for

    if not args.annotations.exists():
        raise FileNotFoundError(f"{args.annotations}: no such annotation file or folder")
    if args.annotations.is_file():
        if len(args.data) != 1:
            raise ValueError(
                f"{args.annotations}: one file annotates one slide; for {len(args.data)} "
                "slides give a folder of <slide stem>.geojson (or .xml, _mask.png, .labels.tif)"
            )
        return [(args.data[0], args.annotations)]
    return [(path, annotation_for(path, args.annotations)) for path in args.data]


def train_on_slides(args: argparse.Namespace, make_config: Any, train: Any) -> int:
    """One slide: held out by region; several: by slide (each with its own annotation).
    ``make_config`` and ``train`` are the folder command's config and training run."""
    import numpy as np

    from napari_mitosis.classification.data import balanced_cells
    from napari_mitosis.classification.slide_regions import (
        read_patches,
        region_examples,
        sample_cells,
    )
    from napari_mitosis.io.formats import open_slide

    pairs = _annotated_slides(args)
    refuse_existing((args.out, args.out.with_suffix(".csv")), overwrite=args.overwrite)
    classes = tuple(args.classes) if args.classes else ("normal", "tumour")
    if args.init is not None:  # patches as the model to fine-tune saw them
        from napari_mitosis.models.checkpoint import read_card
        from napari_mitosis.models.registry import resolve_model

        base = read_card(resolve_model(args.init))
        args.input_size = args.input_size or base.input_size
        if args.mpp is None and args.level is None:
            args.mpp = base.mpp
    rng = np.random.default_rng(args.seed)
    size = args.input_size or 96
    sets: dict[str, list] = {"train": [], "val": []}
    if len(pairs) == 1:  # held out by region
        slide_path, annotation = pairs[0]
        slide = open_slide(slide_path)
        grid, labels = _slide_cells(args, slide, annotation)
        found = region_examples(
            slide, grid, labels, classes, patch=size, per_class=args.per_class,
            val_fraction=args.val_fraction, context=args.context, rng=rng, what=annotation,
        )  # fmt: skip
        sets = {"train": [found.train], "val": [found.validation]}
        counts = ", ".join(f"{c} {a} + {b}" for c, (a, b) in found.counts().items())
        print(f"{slide_path.name}: training + validation patches: {counts}")
        print(found.description)
        cells = int(np.sum(labels >= 0))
        notes = [
            slide_provenance(slide_path, annotation, cells, found.description, "annotated cells")
        ]
    else:  # held out by slide
        notes = []
        order = rng.permutation(len(pairs))
        n_val = max(1, round(len(pairs) * args.val_fraction))
        for rank, index in enumerate(order):
            slide_path, annotation = pairs[index]
            slide = open_slide(slide_path)
            grid, labels = _slide_cells(args, slide, annotation)
            if args.classes:
                chosen = sample_cells(labels, len(classes), args.per_class, rng)
            else:
                chosen = balanced_cells(labels, args.per_class, rng, slide_path)
            if not len(chosen):
                raise ValueError(f"{annotation}: no annotated cells at level {grid.level}")
            patches = read_patches(slide, grid, grid.origins()[chosen], size, args.context)
            side = "val" if rank < n_val else "train"
            sets[side].append((patches, labels[chosen].astype(int)))
            notes.append(
                f"slide {slide_path.name} ({'validation' if side == 'val' else 'training'})"
            )
            print(f"{slide_path.name}: {len(chosen)} patches at level {grid.level}")
    mpp = slide.level_mpp(grid.level)[1] if slide.mpp else None
    joined = {
        k: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v]))
        for k, v in sets.items()
    }
    config = make_config(
        args,
        input_size=args.input_size or size,
        classes=classes,
        mpp=mpp,
        context=args.context,
    )
    split = "split by " + ("region" if len(pairs) == 1 else "slide")
    config.notes = "; ".join(n for n in (args.notes, split, *notes) if n)
    train(args, config, joined["train"], joined["val"])
    return 0


def evaluate_on_slides(args: argparse.Namespace) -> int:
    """Cell-level metrics against the tumour annotations, and the Camelyon16 FROC."""
    import numpy as np

    from napari_mitosis.classification.data import tumour_mask
    from napari_mitosis.classification.froc import froc, heatmap_candidates, lesions_from_mask
    from napari_mitosis.classification.metrics import binary_metrics, write_roc_plot
    from napari_mitosis.classification.run import classify_slide
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.models.checkpoint import read_card

    if len(read_card(args.model).classes) > 2:
        return _evaluate_classes_on_slides(args)
    table, plot = args.out / "evaluation.csv", args.out / "roc.png"
    refuse_existing((table, plot), overwrite=args.overwrite)
    labels, scores, per_slide, rows = [], [], [], ["slide,cells,tumour_cells,lesions,candidates"]
    for path, annotation in _annotated_slides(args):
        slide = open_slide(path, mpp=args.mpp)
        tumour = tumour_mask(slide, annotation)
        result = classify_slide(slide, args.model, device=args.device, tta=args.tta)
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
    if args.json:
        print(json.dumps({**metrics.as_dict(), "froc": curve.score}))
    return 0


def _evaluate_classes_on_slides(args: argparse.Namespace) -> int:
    """A K-class model's cells against each slide's class regions (its card's classes)."""
    import numpy as np

    from napari_mitosis.classification.metrics import multiclass_metrics, write_confusion_plot
    from napari_mitosis.classification.run import classify_slide
    from napari_mitosis.classification.slide_regions import class_regions
    from napari_mitosis.io.formats import open_slide

    table, plot = args.out / "evaluation.csv", args.out / "confusion.png"
    refuse_existing((table, plot), overwrite=args.overwrite)
    labels, scores, rows, classes = [], [], ["slide,cells,annotated_cells"], ()
    for path, annotation in _annotated_slides(args):
        slide = open_slide(path, mpp=args.mpp)
        result = classify_slide(slide, args.model, device=args.device, tta=args.tta)
        classes = result.classes
        regions = class_regions(slide, annotation, classes)
        cells = np.argwhere(result.visited)
        centres = (cells + 0.5) * result.cell_level0 + np.asarray(result.origin_level0)
        at = [
            np.clip((centres[:, i] / regions.downsample[i]).astype(int), 0, n - 1)
            for i, n in enumerate(regions.labels.shape)
        ]
        truth = regions.labels[at[0], at[1]] - 1
        known = truth >= 0
        probabilities = np.asarray(result.probabilities)[:, cells[:, 0], cells[:, 1]].T
        labels.append(truth[known])
        scores.append(probabilities[known])
        rows.append(f"{path.name},{len(cells)},{int(known.sum())}")
    y, p = np.concatenate(labels), np.concatenate(scores)
    metrics = multiclass_metrics(y, p)
    print(f"annotated cells of {len(args.data)} slides: {metrics.summary(tuple(classes))}")
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_output(table, overwrite=args.overwrite) as tmp:
        tmp.write_text("\n".join(rows) + "\n")
    write_confusion_plot(plot, y, p, tuple(classes), title="cells", overwrite=args.overwrite)
    print(f"  {table}\n  {plot}")
    if args.json:
        print(json.dumps(metrics.as_dict()))
    return 0
