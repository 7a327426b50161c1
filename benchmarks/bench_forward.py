"""The model's forward pass alone, per patch, as each tool runs it, in one process:

- eager: the model as trained (WSInfer without ``--speedup`` runs it as unfrozen TorchScript);
- ours: `inference_model.for_inference` (batch norm folded by torch.fx, channels-last);
- TorchScript frozen: ``torch.jit.freeze`` + ``optimize_for_inference`` of the traced
  model — what ``wsinfer --speedup`` runs.

It bounds the whole-slide comparison: no tool can beat another by more than their
forward passes and start-ups allow. Also printed: ``import torch`` in a fresh interpreter,
the start-up every tool pays.

    python benchmarks/bench_forward.py [--architecture small_cnn] [--patch 96] [--batch 32]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings

import torch

from napari_mitosis.models.checkpoint import ModelCard, build_model
from napari_mitosis.models.inference_model import channels_last, for_inference


def per_patch_ms(model: torch.nn.Module, batch: torch.Tensor, repeats: int) -> float:
    with torch.inference_mode():
        for _ in range(2):  # warm-up: oneDNN primitives, TorchScript's profiling runs
            model(batch)
        started = time.perf_counter()
        for _ in range(repeats):
            model(batch)
    return (time.perf_counter() - started) / repeats / len(batch) * 1e3


def import_torch_seconds() -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--architecture", default="small_cnn")
    parser.add_argument("--patch", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    card = ModelCard(args.architecture, {"outputs": 1}, input_size=args.patch)
    eager = build_model(card).eval()
    batch = torch.randn(args.batch, 3, args.patch, args.patch)
    ours = for_inference(eager)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, still shipped
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(eager, batch)))
        reference = eager(batch)
        scale = reference.abs().max().item()  # untrained deep models give huge logits
        differences = {
            "ours": (ours(channels_last(batch)) - reference).abs().max().item() / scale,
            "TorchScript frozen": (frozen(batch) - reference).abs().max().item() / scale,
        }
    times = {
        "eager": per_patch_ms(eager, batch, args.repeats),
        "ours": per_patch_ms(ours, channels_last(batch), args.repeats),
        "TorchScript frozen": per_patch_ms(frozen, batch, args.repeats),
    }
    print(
        f"{args.architecture}, {args.patch} px, batch {args.batch}, "
        f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    for name, ms in times.items():
        extra = (
            f"  max |Δlogit| / max |logit| {differences[name]:.1e}" if name in differences else ""
        )
        print(f"  {name:20s} {ms:7.3f} ms/patch  ours ×{ms / times['ours']:.2f}{extra}")
    print(f"  import torch (fresh interpreter): {import_torch_seconds():.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
