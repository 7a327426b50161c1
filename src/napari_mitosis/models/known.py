"""Published models known by name: where each is downloaded from, its licence and
provenance, and the card that runs it as its publisher does.

``napari-mitosis models import NAME`` downloads the publisher's file (its SHA-256 recorded
in the registry entry at the first download and checked when the same file is imported
again); ``models import FILE --as NAME`` takes a copy the user already has (air-gapped
sites). Either way the weights are read without running the file's code
(`inert_pickle`), must fill every weight of the card's architecture, and are registered
as one of our checkpoints with the publisher's card.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_mitosis.models.card import ModelCard  # torch-free: the CLI lists these names


@dataclass(frozen=True)
class Published:
    """A published model: its file's address, licence, provenance and card."""

    name: str
    url: str
    file: str
    licence: str
    provenance: str
    card: ModelCard
    prefix: str = "model."  # Lightning's attribute for the network in its state_dict


MIDOG25_FCOS = Published(
    name="midog25-fcos",
    url="https://github.com/DeepMicroscopy/MIDOG25_T1_reference_docker/releases/download/"
    "v1.0.0/FCOS_x101.ckpt",
    file="FCOS_x101.ckpt",
    licence="not stated by the publisher (DeepMicroscopy); ask them before clinical or "
    "commercial use",
    provenance="MIDOG 2025 track-1 reference detector: FCOS on a ResNeXt-101 32x8d FPN, "
    "DeepMicroscopy/MIDOG25_T1_reference_docker release v1.0.0",
    card=ModelCard(
        "fcos",
        {
            "backbone": "resnext101_32x8d",
            "tile": 1024,
            "score_threshold": 0.2,  # its candidates; the card's threshold calls figures
            "nms_threshold": 0.6,
            "detections_per_img": 300,
            "topk_candidates": 1000,
        },
        task="detection",
        input_size=1024,
        mpp=0.25,
        mean=(0.0, 0.0, 0.0),  # FCOS normalises inside, as the reference feeds it [0, 1]
        std=(1.0, 1.0, 1.0),
        classes=("background", "mitotic figure"),
        threshold=0.548,
        notes="MIDOG 2025 track-1 reference detector (FCOS, ResNeXt-101 FPN), trained on "
        "the MIDOG 2025 training data by its organisers",
        mpp_tolerance=0.2,  # level 0 of the MIDOG scanners (0.23–0.27 µm/px), as published
    ),
)

PUBLISHED = {model.name: model for model in (MIDOG25_FCOS,)}


def known(name: str) -> Published:
    if name not in PUBLISHED:
        raise ValueError(f"{name!r} is not a published model we know; known: {sorted(PUBLISHED)}")
    return PUBLISHED[name]


def download(model: Published, folder: Path) -> Path:
    """The publisher's file, downloaded into ``folder`` (kept there: a second import does
    not download again); offline, an error names the address and what to do instead.
    Its SHA-256 is recorded beside it at the first download and checked at every later
    use: a file that changed since is refused."""
    from napari_mitosis.models.registry import file_sha256

    target = folder / model.file
    record = target.with_name(target.name + ".sha256")
    if target.is_file() and record.is_file():
        if file_sha256(target) != record.read_text().strip():
            raise ValueError(
                f"{target}: its SHA-256 is not the one recorded when it was downloaded "
                f"({record}); delete both to download {model.name} again"
            )
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(model.url, timeout=60) as answer, partial.open("wb") as out:
            while block := answer.read(1 << 20):
                out.write(block)
    except (urllib.error.URLError, OSError) as err:
        partial.unlink(missing_ok=True)
        raise ValueError(
            f"{model.url}: could not download {model.name} ({err}). Download it where you "
            f"can and run `napari-mitosis models import FILE --as {model.name}`, or put it "
            f"at {target}"
        ) from None
    record.write_text(file_sha256(partial) + "\n")
    partial.replace(target)
    return target


def published_network(path: str | Path, model: Published) -> Any:
    """The publisher's checkpoint in the card's architecture: its tensors (no code runs),
    every weight of the architecture filled (unused extras of the file are ignored, as its
    publisher loads it with ``strict=False``)."""
    from napari_mitosis.models.card import build_model
    from napari_mitosis.models.inert_pickle import checkpoint_state_dict

    state = checkpoint_state_dict(path, prefix=model.prefix)
    network = build_model(model.card)
    missing, _unexpected = network.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(
            f"{path}: not a {model.name} checkpoint: {len(missing)} of its "
            f"{len(network.state_dict())} weights are missing (e.g. {missing[0]})"
        )
    return network
