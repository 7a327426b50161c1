"""The HTTP service under load: 1,000 classify requests (one PNG patch each) from 32
concurrent loopback clients against `napari-mitosis serve` in its own process, beside the
same model's own batched forward rate on the same machine (``classify_images`` on batches
of 64 decoded patches — what the server's batcher runs).

Prints requests/s, p50/p99 latency, errors (goal 0), the server's peak RSS, and served
rate / forward rate (goal ≥ 0.8). Client and server share
the machine's cores, so on a small machine the clients' own work lowers the ratio.

Run: python benchmarks/bench_serve.py [--requests 1000] [--clients 32]
     [--architecture small_cnn|resnet18] [--size 50]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def model_file(folder: Path, architecture: str, size: int) -> Path:
    from napari_mitosis.models.card import ModelCard, build_model
    from napari_mitosis.models.checkpoint import save_checkpoint

    options = {"outputs": 1, "width": 32} if architecture == "small_cnn" else {"outputs": 1}
    card = ModelCard(
        architecture,
        options,
        task="classification",
        input_size=size,
        mpp=None,
        classes=("benign", "idc"),
    )
    return save_checkpoint(folder / f"{architecture}.safetensors", build_model(card), card)


def forward_rate(path: Path, patches: list[np.ndarray], batch: int = 64) -> float:
    """Images/s of the model's own batched path (decoded patches in, probabilities out)."""
    from napari_mitosis.classification.run import ClassifierPredictor, classify_images
    from napari_mitosis.models.checkpoint import load_checkpoint

    model, card = load_checkpoint(path)
    predictor = ClassifierPredictor(model, card, "cpu")
    classify_images(patches[:batch], predictor)  # warm-up
    started = time.perf_counter()
    done = 0
    while time.perf_counter() - started < 5 or done < 4 * batch:
        classify_images(patches[:batch], predictor)
        done += batch
    return done / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def load(url: str, bodies: list[bytes], clients: int) -> tuple[list[float], int, float]:
    import httpx

    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def client(session: httpx.AsyncClient) -> None:
        nonlocal errors
        while True:
            try:
                body = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            started = time.perf_counter()
            try:
                response = await session.post(url, files={"image": ("p.png", body, "image/png")})
                ok = response.status_code == 200 and len(response.json()["results"]) == 1
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - started)
            errors += not ok

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as session:
        started = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(clients)))
        return latencies, errors, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--architecture", default="small_cnn", choices=("small_cnn", "resnet18"))
    parser.add_argument("--size", type=int, default=50, help="patch side in px (IDC: 50)")
    args = parser.parse_args()
    import psutil

    rng = np.random.default_rng(0)
    patches = [rng.integers(0, 255, (args.size, args.size, 3), np.uint8) for _ in range(256)]
    bodies = [png(patches[i % len(patches)]) for i in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        path = model_file(Path(tmp), args.architecture, args.size)
        rate = forward_rate(path, patches)
        port = free_port()
        command = [sys.executable, "-m", "napari_mitosis", "serve", "--models", str(path)]
        command += ["--port", str(port), "--device", "cpu"]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        peak = [0]
        stop = threading.Event()

        def watch() -> None:
            process = psutil.Process(server.pid)
            while not stop.is_set():
                try:
                    peak[0] = max(peak[0], process.memory_info().rss)
                except psutil.Error:
                    return
                time.sleep(0.05)

        threading.Thread(target=watch, daemon=True).start()
        try:
            import httpx

            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            url = f"http://127.0.0.1:{port}/v1/classify"
            asyncio.run(load(url, bodies[:64], args.clients))  # warm-up
            latencies, errors, seconds = asyncio.run(load(url, bodies, args.clients))
        finally:
            stop.set()
            server.terminate()
            server.wait(timeout=30)
    served = len(latencies) / seconds
    p50, p99 = np.percentile(np.asarray(latencies) * 1e3, [50, 99])
    print(
        f"{args.architecture} at {args.size} px, {args.requests} requests, {args.clients} clients"
    )
    print(
        f"  served:  {served:8.1f} requests/s  p50 {p50:.1f} ms  p99 {p99:.1f} ms  errors {errors}"
    )
    print(f"  forward: {rate:8.1f} images/s (batches of 64, the model's own path)")
    print(f"  served / forward: {served / rate:.2f}×  server peak RSS {peak[0] / 2**20:.0f} MiB")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
