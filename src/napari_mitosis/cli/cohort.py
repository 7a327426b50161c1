"""``run``: the whole pipeline over many slides on Dask."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_mitosis.cli.options import CommandAdder, device_option


def _run(args: argparse.Namespace) -> int:
    from napari_mitosis.cohort.config import read_run_config, settings_from_checkpoints
    from napari_mitosis.cohort.runner import run_cohort

    options = {
        "detect_in": args.detect_in,
        "detect_tile": args.detect_tile,
        "heatmap_format": args.heatmap_format,
        "device": args.device,
        "drop_unverified": args.drop_unverified or None,
    }
    for key in ("subtype", "verify"):  # crop classifiers: files or registered names
        if getattr(args, key) is not None:
            from napari_mitosis.models.registry import resolve_model

            options[key] = str(Path(resolve_model(getattr(args, key))).resolve())
    configs = [m for m in args.models if m.suffix.lower() in (".yaml", ".yml", ".toml")]
    if configs and len(args.models) > 1:
        raise ValueError("give either one run config or model checkpoints, not both")
    if configs:
        settings = read_run_config(configs[0], **options)
    else:
        settings = settings_from_checkpoints(
            args.models, **{k: v for k, v in options.items() if v is not None}
        )
    from napari_mitosis.cohort.progress import cohort_progress

    with cohort_progress(quiet=args.no_progress) as on_event:
        report = run_cohort(
            args.slides,
            settings,
            args.out,
            scheduler=args.scheduler,
            workers=args.workers,
            overwrite=args.overwrite,
            mpp=args.mpp,
            on_event=on_event,
        )
    done = len(report.rows) - len(report.failed)
    print(f"{done} of {len(report.rows)} slides done ({len(report.skipped)} from an earlier run)")
    for row in report.failed:
        print(f"  failed: {row['path']}: {row.get('error')}", file=sys.stderr)
    print(f"summary: {report.summary}")
    return 1 if report.failed else 0


def register(command: CommandAdder) -> None:
    """Add ``run``."""
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
        "--subtype",
        type=Path,
        help="a crop classifier for each candidate (atypical vs normal): adds p_atypical and "
        "the summary's atypical_count, atypical_per_mm2 and atypical_fraction",
    )
    rn.add_argument("--verify", type=Path, help="a second-stage crop classifier (p_mitosis)")
    rn.add_argument(
        "--drop-unverified",
        action="store_true",
        help="with --verify: keep only candidates at or above the verifier's threshold",
    )
    rn.add_argument(
        "--heatmap-format",
        choices=("ome-zarr", "tiff"),
        help="tumour heatmap files (default: the run config's, else OME-Zarr)",
    )
    rn.add_argument(
        "--device",
        type=device_option,
        help="auto, cuda, cuda:N or cpu, on every worker (default: the run config's, else auto)",
    )
    rn.add_argument(
        "--mpp",
        type=float,
        help="µm per pixel of slides whose file does not say and whose slide list has no "
        "mpp column value",
    )
    rn.add_argument("--overwrite", action="store_true", help="redo every slide")
    rn.add_argument("--no-progress", action="store_true", help="no progress bar (logs, batch jobs)")
    rn.set_defaults(run=_run)
