"""A local model registry: models copied under one folder, each found by a short name.

The folder is ``$NAPARI_MITOSIS_MODELS``, else ``models`` in the user's cache folder
(platformdirs). Each model is a sub-folder named for it, holding the model's files and
``registry.json`` (SHA-256 of every file, task, classes, µm/px, input size, format,
provenance, licence). Nothing else is kept: an air-gapped site pre-seeds a registry by
copying such folders in, and `ModelRegistry.entries` reads them as they are.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_mitosis.io.output_file import atomic_directory
from napari_mitosis.models.card import ModelCard

ENTRY_FILE = "registry.json"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
HF_PREFIX = "hf://"


def default_root() -> Path:
    """Where the registry lives: ``$NAPARI_MITOSIS_MODELS`` or the user cache folder."""
    env = os.environ.get("NAPARI_MITOSIS_MODELS")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("napari-mitosis")) / "models"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class RegistryEntry:
    """One registered model, as ``registry.json`` records it."""

    name: str
    model: str  # the model's path inside the entry folder (a file or ".")
    task: str
    architecture: str
    classes: list[str]
    mpp: float | None
    input_size: int
    format: str
    sha256: dict[str, str]  # file (relative to the entry folder) → SHA-256
    source: str = ""  # where it was imported from (a path or hf://owner/repo@revision)
    licence: str = ""
    provenance: str = ""
    imported: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def checksum(self) -> str:
        """One SHA-256 over every file's: what a cohort run records and checks."""
        digest = hashlib.sha256()
        for name in sorted(self.sha256):
            digest.update(f"{name}\0{self.sha256[name]}\0".encode())
        return digest.hexdigest()


class ModelRegistry:
    """The registry under ``root`` (default: `default_root`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()

    def entries(self, task: str | None = None) -> list[RegistryEntry]:
        """Every registered model (of ``task``), by name."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in sorted(self.root.iterdir()):
            if (folder / ENTRY_FILE).is_file() and not folder.name.startswith("."):
                entry = self._read(folder)
                if task is None or entry.task == task:
                    found.append(entry)
        return found

    def names(self, task: str | None = None) -> list[str]:
        return [e.name for e in self.entries(task)]

    def _read(self, folder: Path) -> RegistryEntry:
        path = folder / ENTRY_FILE
        try:
            record = json.loads(path.read_text())
            # The folder's name is the model's name: a copied folder is registered as it is.
            return RegistryEntry(**{**record, "name": folder.name})
        except (OSError, ValueError, TypeError) as err:
            raise ValueError(f"{path}: not a readable registry entry ({err})") from None

    def get(self, name: str) -> RegistryEntry:
        folder = self.root / name
        if not NAME.match(name) or not (folder / ENTRY_FILE).is_file():
            known = ", ".join(self.names()) or "none yet"
            raise KeyError(
                f"{name}: no such model file or registered model (registered in {self.root}: "
                f"{known}; see `napari-mitosis models list`)"
            )
        return self._read(folder)

    def path(self, name: str) -> Path:
        """The registered model's path, as `read_card` and `load_checkpoint` take it."""
        entry = self.get(name)
        return (self.root / name / entry.model).resolve()

    def verify(self, name: str) -> list[str]:
        """Files whose checksum no longer matches the one recorded (empty: intact)."""
        entry, folder = self.get(name), self.root / name
        return [
            file
            for file, digest in entry.sha256.items()
            if not (folder / file).is_file() or file_sha256(folder / file) != digest
        ]

    def add(
        self,
        files: list[Path],
        base: Path,
        model: Path,
        card: ModelCard,
        *,
        name: str,
        fmt: str,
        source: str,
        licence: str = "",
        provenance: str = "",
        overwrite: bool = False,
        extra: dict[str, Any] | None = None,
    ) -> RegistryEntry:
        """Copy ``files`` (relative to ``base``; ``model`` is the path `read_card` takes)
        into a new entry, atomically: a failed copy leaves no half-made entry."""
        if not NAME.match(name):
            raise ValueError(
                f"{name!r}: a model name is letters, digits, '.', '_' or '-' (≤ 100), "
                "starting with a letter or digit"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.root / name
        if target.exists() and not overwrite:
            raise ValueError(
                f"{target}: a model named {name} is registered; choose another --name or "
                "remove it first"
            )
        sums = {}
        with atomic_directory(target, overwrite=overwrite) as tmp:
            for file in files:
                relative = file.relative_to(base)
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(file, tmp / relative)
                sums[relative.as_posix()] = file_sha256(tmp / relative)
            entry = RegistryEntry(
                name=name,
                model=model.relative_to(base).as_posix() if model != base else ".",
                task=card.task,
                architecture=card.architecture,
                classes=list(card.classes),
                mpp=card.mpp,
                input_size=card.input_size,
                format=fmt,
                sha256=sums,
                source=source,
                licence=licence,
                provenance=provenance or card.notes,
                imported=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                extra=dict(extra or {}),
            )
            (tmp / ENTRY_FILE).write_text(json.dumps(asdict(entry), indent=1))
        return entry

    def remove(self, name: str) -> None:
        self.get(name)  # a clear error for an unknown name
        shutil.rmtree(self.root / name)

    def name_of(self, path: str | Path) -> str | None:
        """The registered name of a model path inside this registry, else None."""
        try:
            relative = Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        name = relative.parts[0] if relative.parts else None
        return name if name and (self.root / name / ENTRY_FILE).is_file() else None


def resolve_model(ref: str | Path, registry: ModelRegistry | None = None) -> Path:
    """A model path as given, or the path of the registered model of that name."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    text = str(ref)
    if NAME.match(text) and "/" not in text and path.suffix != ".safetensors":
        try:
            return (registry or ModelRegistry()).path(text)
        except KeyError as err:
            raise FileNotFoundError(str(err.args[0])) from None
    raise FileNotFoundError(f"{path}: no such model file or folder")


def model_name(ref: str | Path | None) -> str | None:
    """How outputs name a model: a registered model by its name, a file by its file name
    (``detector.safetensors``), a folder by the folder's."""
    if ref is None:
        return None
    path = Path(ref).expanduser()
    return path.name if path.exists() else str(ref)


def download_hf(spec: str) -> tuple[Path, str]:
    """``hf://owner/repo[@revision]`` → a local snapshot folder and its exact source."""
    body = spec[len(HF_PREFIX) :]
    repo, _, revision = body.partition("@")
    if repo.count("/") != 1:
        raise ValueError(f"{spec}: expected hf://owner/repo[@revision]")
    try:
        from huggingface_hub import snapshot_download
    except ModuleNotFoundError:
        raise ValueError(
            f"{spec}: downloading from the Hugging Face Hub needs huggingface_hub; install "
            "it with `pip install napari-mitosis[hub]`, or download the folder yourself and "
            "import its path"
        ) from None
    try:
        folder = snapshot_download(repo_id=repo, revision=revision or None)
    except Exception as err:  # offline, unknown repo, gated model: its own message says
        raise ValueError(
            f"{spec}: could not be downloaded ({type(err).__name__}: {err}); offline, copy "
            "the model folder onto this machine and import its path"
        ) from None
    return Path(folder), f"{HF_PREFIX}{repo}@{revision or 'main'}"
