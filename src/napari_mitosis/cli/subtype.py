"""``subtype``: crop classifiers on each mitosis candidate of a slide (atypical vs normal,
and a second-stage verifier); the options ``detect`` shares for doing it in one go."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from napari_mitosis.cli.options import (
    IMAGE_HELP,
    CommandAdder,
    add_device,
    add_mpp,
    add_overwrite,
)
from napari_mitosis.io.output_file import refuse_existing


def add_candidate_classifiers(parser: argparse.ArgumentParser, *, subtype_flag: str) -> None:
    """``--model``/``--subtype``, ``--verify`` and ``--drop-unverified``."""
    parser.add_argument(
        subtype_flag,
        dest="subtype",
        type=Path,
        help="a crop classifier for each candidate (e.g. atypical vs normal, "
        "recipes/atypical-mitosis.yaml): a checkpoint or registered name; adds p_<class>",
    )
    parser.add_argument(
        "--verify",
        type=Path,
        help="a second-stage crop classifier (mitosis vs imposter); adds p_mitosis",
    )
    parser.add_argument(
        "--drop-unverified",
        action="store_true",
        help="with --verify: drop candidates below the verifier's threshold (its card's)",
    )
    parser.add_argument(
        "--midog-json",
        action="store_true",
        help="also write <image>.mitotic-figures.json, MIDOG's points (mm when µm/px is known)",
    )


def load_candidate_classifiers(args: argparse.Namespace) -> dict[str, Any]:
    """The loaded predictors and their names, as `classify_candidates` takes them."""
    from napari_mitosis.classification.predictor import ClassifierPredictor
    from napari_mitosis.models.checkpoint import load_checkpoint

    loaded: dict[str, Any] = {"subtype": None, "verify": None}
    names: list[str | None] = [None, None]
    for i, key in enumerate(("subtype", "verify")):
        where = getattr(args, key, None)
        if where is None:
            continue
        model, card = load_checkpoint(where, task="classification")
        if card.mpp is None:
            raise ValueError(
                f"{where}: its card gives no µm/px, so its crops cannot be read from a slide at "
                "the scale it learnt (train it with --mpp, e.g. 0.25 for 40× crops)"
            )
        loaded[key] = ClassifierPredictor(model, card, args.device)
        names[i] = Path(where).stem if Path(where).suffix else str(where)
    if args.drop_unverified and loaded["verify"] is None:
        raise ValueError("--drop-unverified needs a verifier (--verify)")
    return {**loaded, "names": tuple(names)}


def atypical_threshold(classifiers: dict[str, Any]) -> float | None:
    subtype = classifiers["subtype"]
    return None if subtype is None else float(subtype.card.threshold)


def describe_scores(scores: Any, kept: int, total: int) -> str:
    """One line: atypical calls and what the verifier passed."""
    parts = []
    for column, record in scores.models.items():
        values = scores.columns[column]
        above = int((values >= record["threshold"]).sum())
        parts.append(f"{above} of {len(values)} with {column} ≥ {record['threshold']:.3g}")
    if kept != total:
        parts.append(f"{total - kept} dropped below the verifier's threshold")
    return "; ".join(parts)


def detect_and_classify(args: argparse.Namespace) -> int:
    """``detect``: boxes, then (``--subtype``/``--verify``) each candidate's crops."""
    from napari_mitosis.cli.options import parse_region
    from napari_mitosis.detection.candidate_files import CandidateFile, output_paths
    from napari_mitosis.detection.run import detect_slide
    from napari_mitosis.engine.timing import TimeEstimate
    from napari_mitosis.io.formats import open_slide
    from napari_mitosis.models.registry import model_name

    outputs = output_paths(args.out, args.image.stem, midog_json=args.midog_json)
    refuse_existing(outputs, overwrite=args.overwrite)
    classifiers = load_candidate_classifiers(args)
    with open_slide(args.image, mpp=args.mpp) as slide:
        region = parse_region(args.region)
        if args.hotspot_from is not None:
            region = _hotspot_of(args, slide)
        result = detect_slide(
            slide,
            args.model,
            region=region,
            progress=TimeEstimate("tiles"),
            device=args.device,
            tissue_only=args.tissue_only,
            min_tissue=args.min_tissue,
            score_threshold=args.threshold,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device_tiles=args.device_tiles,
        )
        found = CandidateFile(args.image, result.detections, detector=model_name(args.model))
        written, line = _classify_and_write(args, slide, found, classifiers)
    print(f"{args.image}: {result.summary()}" + (f"\n  {line}" if line else ""))
    for path in written:
        print(f"  {path}")
    return 0


def _hotspot_of(args: argparse.Namespace, slide: Any) -> tuple[int, int, int, int]:
    """``--hotspot-from FAST``: the region of FAST's 10-HPF hotspot (`detect_hotspot`)."""
    from napari_mitosis.detection.run import detect_hotspot
    from napari_mitosis.engine.timing import TimeEstimate

    if args.region is not None:
        raise ValueError("give --region or --hotspot-from, not both")
    region, fast = detect_hotspot(
        slide,
        args.hotspot_from,
        device=args.device,
        min_tissue=args.min_tissue,
        overlap=args.overlap,
        batch_size=args.batch_size,
        progress=TimeEstimate("tiles"),
    )
    print(
        f"{args.image}: hotspot by {args.hotspot_from}: {fast.hotspot['count']:.0f} "
        f"candidates, {fast.hotspot['per_10_hpf']:.1f} per 10 HPF; {args.model} runs on "
        f"region {','.join(str(v) for v in region)} (level-0 px) alone"
    )
    return region


def _classify_and_write(
    args: argparse.Namespace, slide: Any, found: Any, classifiers: dict[str, Any]
) -> tuple[list[Path], str]:
    """Each candidate through the chosen classifiers, then GeoJSON, CSV (and MIDOG JSON);
    returns the files and a line on what the classifiers said ("" without any)."""
    from napari_mitosis.detection.candidates import classify_candidates

    line = ""
    if classifiers["subtype"] is not None or classifiers["verify"] is not None:
        scores = classify_candidates(
            slide,
            found.centres,
            subtype=classifiers["subtype"],
            verify=classifiers["verify"],
            names=classifiers["names"],
            batch_size=getattr(args, "crop_batch_size", 32),
        )
        total = len(found.detections)
        found = found.scored(scores, drop_unverified=args.drop_unverified)
        line = describe_scores(scores, len(found.detections), total)
    written = found.write(
        args.out,
        args.image.stem,
        midog_json=args.midog_json,
        atypical_threshold=atypical_threshold(classifiers),
        overwrite=args.overwrite,
    )
    return written, line


def _subtype(args: argparse.Namespace) -> int:
    from napari_mitosis.detection.candidate_files import output_paths, read_candidates
    from napari_mitosis.io.formats import open_slide

    if args.subtype is None and args.verify is None:
        raise ValueError("give a classifier (--model) or a verifier (--verify), or both")
    outputs = output_paths(args.out, args.image.stem, midog_json=args.midog_json)
    refuse_existing(outputs, overwrite=args.overwrite)
    classifiers = load_candidate_classifiers(args)
    with open_slide(args.image, mpp=args.mpp) as slide:
        candidates = read_candidates(args.detections, mpp=slide.mpp)
        written, line = _classify_and_write(args, slide, candidates, classifiers)
    print(f"{args.image}: {len(candidates.detections)} candidates; {line}")
    for path in written:
        print(f"  {path}")
    return 0


def register(command: CommandAdder) -> None:
    st = command("subtype", "classify each mitosis candidate: atypical vs normal, and verify")
    st.add_argument("image", type=Path, help=IMAGE_HELP)
    st.add_argument(
        "--detections",
        type=Path,
        required=True,
        help="the candidates: QuPath GeoJSON (points or boxes; a review keeps its "
        "decisions), our CSV, or MIDOG points JSON",
    )
    add_candidate_classifiers(st, subtype_flag="--model")
    st.add_argument("--out", type=Path, required=True, help="output folder")
    st.add_argument(
        "--batch-size", dest="crop_batch_size", type=int, default=32, help="crops per forward pass"
    )
    add_mpp(st)
    add_device(st)
    add_overwrite(st)
    st.set_defaults(run=_subtype)
