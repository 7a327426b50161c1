"""Model files → (model, card): our checkpoints, published formats and registered names.

Our checkpoints are safetensors weights with the model card (architecture, its keyword
options, input size, µm/pixel, normalisation, classes, threshold, provenance) in the
header, which is plain JSON: loading never unpickles anything. `read_card` and
`load_checkpoint` also take WSInfer folders, TorchScript/ONNX files with a card
(`published`) and names in the local registry (`registry`), so every command, widget and
cohort run takes any of them as its ``--model``.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from napari_mitosis.io.output_file import atomic_output
from napari_mitosis.models.card import (
    FACTORIES,
    ModelCard,
    build_model,
    card_from_dict,
    training_record,
)
from napari_mitosis.models.inference_model import pick_device
from napari_mitosis.models.known import PUBLISHED
from napari_mitosis.models.published import (
    describe_source,
    is_published,
    load_published,
    model_files,
    read_published_card,
)
from napari_mitosis.models.registry import (
    HF_PREFIX,
    ModelRegistry,
    RegistryEntry,
    download_hf,
    resolve_model,
)

__all__ = [
    "CARD_KEY",
    "FACTORIES",
    "ModelCard",
    "build_model",
    "import_model",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
    "training_record",
]

CARD_KEY = "napari_mitosis.model_card"


def save_checkpoint(
    path: str | Path, model: nn.Module, card: ModelCard, *, overwrite: bool = False
) -> Path:
    """Write weights and card atomically as one .safetensors file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_output(path, overwrite=overwrite) as tmp:
        # Written into the temporary file atomic_output made, so the checkpoint gets the
        # permissions the user's umask gives, as every other output (save_file would
        # create a private 0600 file of its own).
        tmp.write_bytes(safetensors_bytes(tensors, metadata={CARD_KEY: json.dumps(asdict(card))}))
    return Path(path)


def read_card(path: str | Path) -> ModelCard:
    """The model card alone (cheap: our checkpoints' header, a published model's config or
    card JSON) of a model file, folder or registered name."""
    path = resolve_model(path)
    if is_published(path):
        return read_published_card(path)
    return _safetensors_card(path)


def _safetensors_card(path: Path) -> ModelCard:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{path}: not a readable safetensors checkpoint ({err}); checkpoints are "
            "safetensors files with a model card (the train-* commands write them), and "
            "pickles (torch.save) are never loaded, since loading one can run any code"
        ) from err
    if CARD_KEY not in meta:
        raise ValueError(
            f"{path}: has no napari-mitosis model card; was it saved by napari-mitosis?"
        )
    return card_from_dict(json.loads(meta[CARD_KEY]), path)


def load_checkpoint(
    path: str | Path, *, task: str | None = None, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ModelCard]:
    """Model (eval mode, on ``device``: ``auto``, cpu, cuda, cuda:N) and card of a model
    file, folder or registered name; ``task`` guards against the wrong kind."""
    device = pick_device(device)
    path = resolve_model(path)
    if is_published(path):
        card = read_published_card(path)
        _check_task(path, card, task)
        model, card = load_published(path)
        return model.to(device).eval(), card
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: not a model (a .safetensors checkpoint, a WSInfer folder with "
            "config.json, or a TorchScript/ONNX file with a .card.json beside it)"
        )
    card = _safetensors_card(path)
    _check_task(path, card, task)
    outputs = card.options.get("num_classes")
    if outputs is not None and outputs != len(card.classes):
        raise ValueError(
            f"{path}: its card names {len(card.classes)} classes {list(card.classes)} but the "
            f"model has {outputs} outputs"
        )
    model = build_model(card)
    state = load_file(str(path))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"{path}: weights do not fit its {card.architecture} card ({err})"
        ) from err
    return model.to(device).eval(), card


def _check_task(path: Path, card: ModelCard, task: str | None) -> None:
    if task is not None and card.task != task:
        raise ValueError(f"{path}: is a {card.task} model, not a {task} model")


def import_model(
    source: str | Path,
    *,
    name: str | None = None,
    licence: str = "",
    provenance: str = "",
    registry: ModelRegistry | None = None,
    overwrite: bool = False,
    as_published: str | None = None,
) -> RegistryEntry:
    """Copy a model (any format `read_card` takes, or ``hf://owner/repo[@revision]``,
    downloaded when online) into the registry under ``name`` (default: its file or
    folder name), recording checksums, task, classes, µm/px and input size.

    A published model's name (`known.PUBLISHED`) downloads it; ``as_published`` names the
    published model a local ``source`` file is (its weights become one of our checkpoints
    with the publisher's card, licence and provenance)."""
    registry = registry or ModelRegistry()
    text = str(source)
    if as_published or (text in PUBLISHED and not Path(text).exists()):
        return _import_published(
            source, as_published, name, licence, provenance, registry, overwrite
        )
    if text.startswith(HF_PREFIX):
        path, origin = download_hf(text)
        name = name or text[len(HF_PREFIX) :].split("@")[0].split("/")[-1]
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such model file or folder")
        origin = str(path.resolve())
    card = read_card(path)  # refuses what is not a model before anything is copied
    base = path if path.is_dir() else path.parent
    files = model_files(path) if is_published(path) else [path]
    name = name or (path.name if path.is_dir() else path.stem)
    return registry.add(
        files,
        base,
        path,
        card,
        name=name,
        fmt=describe_source(path)["format"],
        source=origin,
        licence=licence,
        provenance=provenance,
        overwrite=overwrite,
    )


def _import_published(
    source: str | Path,
    as_published: str | None,
    name: str | None,
    licence: str,
    provenance: str,
    registry: ModelRegistry,
    overwrite: bool,
) -> RegistryEntry:
    import tempfile

    from napari_mitosis.models.known import download, known, published_network
    from napari_mitosis.models.registry import file_sha256

    model = known(as_published or str(source))
    if as_published:
        raw = Path(source).expanduser()
        if not raw.is_file():
            raise FileNotFoundError(f"{raw}: no such file (given as {model.name})")
        origin = str(raw.resolve())
    else:
        raw, origin = download(model, registry.root / ".downloads"), model.url
    network = published_network(raw, model)
    with tempfile.TemporaryDirectory(prefix="napari-mitosis-import-") as folder:
        path = save_checkpoint(Path(folder) / f"{model.name}.safetensors", network, model.card)
        return registry.add(
            [path],
            path.parent,
            path,
            model.card,
            name=name or model.name,
            fmt="safetensors",
            source=origin,
            licence=licence or model.licence,
            provenance=provenance or model.provenance,
            overwrite=overwrite,
            extra={"publisher_file": raw.name, "publisher_sha256": file_sha256(raw)},
        )
