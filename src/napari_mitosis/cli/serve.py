"""``serve``: the models over HTTP (FastAPI on uvicorn; `pip install napari-mitosis[serve]`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from napari_mitosis.cli.options import CommandAdder, add_device


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from napari_mitosis.serve.app import create_app, load_served
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
    served = load_served([str(m) for m in args.models], device=args.device)
    app = create_app(served, token=token, max_upload_mb=args.max_upload_mb)
    where = "this machine only" if args.host in ("127.0.0.1", "localhost", "::1") else "the network"
    print(
        f"serving {', '.join(served)} on http://{args.host}:{args.port} ({where}; "
        f"{'a bearer token is required' if token else 'no token'}; uploads ≤ "
        f"{args.max_upload_mb:g} MB); the API is described at /docs"
    )
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
    add_device(sv)
    sv.set_defaults(run=_serve)
