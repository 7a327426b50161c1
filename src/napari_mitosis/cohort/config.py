"""What reproduces a cohort run: settings from checkpoints or a run config, and
``run-config.yaml`` (every setting, each model's checksum and card, package versions),
which a resumed run must match."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from napari_mitosis.cohort.pipeline import PipelineSettings
from napari_mitosis.io.output_file import atomic_output

RUN_CONFIG = "run-config.yaml"
#: Settings that do not change results; a resumed run may differ in them.
RUN_ONLY = ("device", "device_tiles", "classify_batch_size", "detect_batch_size")
#: The settings that name a model (checksummed, resolved relative to a run config).
ROLES = ("classifier", "detector", "subtype", "verify")


def sha256_of(path: str | Path) -> str:
    """Checksum of a file, or of a folder's files and their relative names (OME-Zarr)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def settings_from_checkpoints(paths: Sequence[str | Path], **options: Any) -> PipelineSettings:
    """Pipeline settings from models (files, folders or registered names): each card says
    whether it is the classifier or the detector."""
    from napari_mitosis.models.checkpoint import read_card
    from napari_mitosis.models.registry import resolve_model

    models: dict[str, str] = {}
    for given in paths:
        path = resolve_model(given)  # a registered name becomes its registry path
        card = read_card(path)
        role = {"classification": "classifier", "detection": "detector"}.get(card.task)
        if role is None:
            raise ValueError(f"{path}: a {card.task} model has no step in a cohort run")
        if role in models:
            raise ValueError(f"{path}: a second {role} (first: {models[role]})")
        models[role] = str(Path(path).resolve())
    if "detector" in models and "classifier" not in models:
        options.setdefault("detect_in", "tissue")
    return PipelineSettings.from_dict({**models, **options})


def read_run_config(path: str | Path, **overrides: Any) -> PipelineSettings:
    """Settings from a run config (YAML or TOML; `write_run_config` writes one). Model
    paths are relative to the file; recorded checksums must match the checkpoints."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                raise ValueError("TOML run configs need Python ≥ 3.11; use YAML") from None
            record = tomllib.loads(text)
        else:
            import yaml

            record = yaml.safe_load(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such run config") from None
    except Exception as err:
        raise ValueError(f"{path}: not a readable run config ({err})") from err
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{path}: a run config needs a 'settings' table")
    settings = dict(record["settings"])
    for role in ROLES:
        if settings.get(role):
            model = Path(settings[role]).expanduser()
            model = model if model.is_absolute() else (path.parent / model).resolve()
            if not model.exists():  # a registered model's name
                from napari_mitosis.models.registry import resolve_model

                try:
                    model = resolve_model(settings[role])
                except FileNotFoundError as err:
                    raise ValueError(f"{path}: {role} {err}") from None
            settings[role] = str(model)
            expected = (record.get("models") or {}).get(role, {}).get("sha256")
            if expected and Path(settings[role]).exists():
                actual = sha256_of(settings[role])
                if actual != expected:
                    raise ValueError(
                        f"{path}: {role} {settings[role]} has checksum {actual[:12]}…, "
                        f"the config records {expected[:12]}… (another model)"
                    )
    settings.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return PipelineSettings.from_dict(settings)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def describe_run(settings: PipelineSettings) -> dict[str, Any]:
    """What reproduces a run: settings, each model's checksum and card, package versions."""
    from napari_mitosis import __version__
    from napari_mitosis.models.checkpoint import read_card
    from napari_mitosis.models.registry import ModelRegistry

    models = {}
    for role in ROLES:
        path = getattr(settings, role)
        if path:
            card = read_card(path)
            models[role] = {
                "path": path,
                "sha256": sha256_of(path),
                "architecture": card.architecture,
                "mpp": card.mpp,
                "classes": list(card.classes),
                "notes": card.notes,
            }
            registered = ModelRegistry().name_of(path)
            if registered:  # a registry name also says where the model came from
                entry = ModelRegistry().get(registered)
                models[role].update(
                    registry=registered, source=entry.source, registry_sha256=entry.checksum
                )
    import torch

    return {
        "napari_mitosis_run": 1,
        "package_version": __version__,
        "torch_version": str(torch.__version__),
        "settings": settings.as_dict(),
        "models": models,
    }


def _comparable(description: dict[str, Any]) -> dict[str, Any]:
    settings = {
        k: v
        for k, v in description.get("settings", {}).items()
        if k not in RUN_ONLY and k not in ROLES
    }
    models = {k: v.get("sha256") for k, v in (description.get("models") or {}).items()}
    return {"settings": settings, "models": models}


def write_run_config(out: Path, description: dict[str, Any], *, overwrite: bool) -> Path:
    """Record the run in ``out/run-config.yaml``; a different earlier run there is an error
    (its results would be mixed with these) unless ``overwrite``."""
    import yaml

    path = out / RUN_CONFIG
    if path.exists() and not overwrite:
        earlier = yaml.safe_load(path.read_text()) or {}
        before, now = _comparable(earlier), _comparable(description)
        if before != now:
            changed = sorted(
                k
                for part in ("settings", "models")
                for k in set(before[part]) | set(now[part])
                if before[part].get(k) != now[part].get(k)
            )
            raise ValueError(
                f"{out}: holds results of a run with other settings or models "
                f"({', '.join(changed)}); use a new --out, or --overwrite to redo every slide"
            )
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(yaml.safe_dump(description, sort_keys=False, allow_unicode=True))
    return path
