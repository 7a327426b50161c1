"""``serve``: the models over HTTP (FastAPI on uvicorn; `pip install napari-mitosis[serve]`)."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from napari_mitosis.cli.options import CommandAdder, add_device


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from napari_mitosis.serve.app import create_app, load_served, served_refs
    except ModuleNotFoundError as err:
        raise ValueError(
            f"serving needs {err.name}; install it with `pip install napari-mitosis[serve]`"
        ) from None
    token = None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as err:
            raise ValueError(f"{args.token_file}: cannot read the token ({err})") from None
        if not token:
            raise ValueError(f"{args.token_file}: the token file is empty")
    if (args.slides_root is None) != (args.results is None):
        raise ValueError("whole-slide jobs need both --slides-root and --results")
    if args.slides_root is not None and not args.slides_root.is_dir():
        raise ValueError(f"{args.slides_root}: --slides-root is not a folder")
    served = load_served(
        [str(m) for m in args.models],
        device=args.device,
        window_s=args.batch_window_ms / 1000,
        max_batch=args.max_batch,
    )
    with contextlib.ExitStack() as stack:
        jobs = None
        if args.results is not None:
            from napari_mitosis.cohort.runner import dask_client
            from napari_mitosis.serve.jobs import JobRunner

            client, _threads = stack.enter_context(
                dask_client(scheduler=args.scheduler, workers=args.workers)
            )
            jobs = JobRunner(
                client,
                args.slides_root,
                args.results,
                served_refs(served),
                device=args.device,
                max_jobs=args.max_jobs,
            )
            stack.callback(jobs.close)
        app = create_app(served, token=token, max_upload_mb=args.max_upload_mb, jobs=jobs)
        local = args.host in ("127.0.0.1", "localhost", "::1")
        where = "this machine only" if local else "the network"
        print(
            f"serving {', '.join(served)} on http://{args.host}:{args.port} ({where}; "
            f"{'a bearer token is required' if token else 'no token'}; uploads ≤ "
            f"{args.max_upload_mb:g} MB); the API is described at /docs",
            flush=True,
        )
        if jobs is not None:
            cluster = args.scheduler or "a local Dask cluster"
            print(f"jobs: slides under {args.slides_root}, results in {args.results}, on {cluster}")
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(command: CommandAdder) -> None:
    sv = command("serve", "the models over HTTP: a REST API and a web page")
    sv.add_argument(
        "--models",
        nargs="+",
        required=True,
        help="classifiers and detectors: checkpoints, published models or registered names",
    )
    sv.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every network)"
    )
    sv.add_argument("--port", type=int, default=8000, help="port to listen on")
    sv.add_argument(
        "--token-file", type=Path, help="a file holding the bearer token calls must send"
    )
    sv.add_argument(
        "--max-upload-mb", type=float, default=50.0, help="largest request body accepted"
    )
    sv.add_argument(
        "--slides-root", type=Path, help="whole-slide jobs may read slides under this folder only"
    )
    sv.add_argument(
        "--results", type=Path, help="whole-slide jobs: their files and jobs.sqlite go here"
    )
    sv.add_argument(
        "--scheduler", help="jobs on this Dask scheduler (tcp://host:8786; default: a local one)"
    )
    sv.add_argument("--workers", type=int, default=None, help="local Dask cluster: processes")
    sv.add_argument(
        "--max-jobs", type=int, default=16, help="queued + running jobs before 429 (queue full)"
    )
    sv.add_argument(
        "--batch-window-ms",
        type=float,
        default=5.0,
        help="classify: how long a request waits for others to share its forward pass",
    )
    sv.add_argument("--max-batch", type=int, default=64, help="classify: images per forward pass")
    add_device(sv)
    sv.set_defaults(run=_serve)
