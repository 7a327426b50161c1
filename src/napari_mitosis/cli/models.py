"""``models``: the local model registry (list, import, info, remove) and the card schema."""

from __future__ import annotations

import argparse
import json

from napari_mitosis.cli.options import CommandAdder, HelpFormatter
from napari_mitosis.models.known import PUBLISHED
from napari_mitosis.models.registry import ModelRegistry

PUBLISHED_NAMES = sorted(PUBLISHED)


def _registry(args: argparse.Namespace) -> ModelRegistry:

    return ModelRegistry(args.registry)


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    entries = registry.entries(args.task)
    if args.json:
        print(json.dumps([e.__dict__ for e in entries], indent=1))
        return 0
    if not entries:
        print(f"no models registered in {registry.root} (add one: napari-mitosis models import)")
        return 0
    print(f"{len(entries)} model(s) in {registry.root}:")
    for e in entries:
        mpp = f"{e.mpp:g} µm/px" if e.mpp else "pixel units"
        print(
            f"  {e.name:<32} {e.task:<14} {e.format:<14} {len(e.classes)} classes, "
            f"{e.input_size} px at {mpp}"
        )
    return 0


def _import(args: argparse.Namespace) -> int:
    from napari_mitosis.models.checkpoint import import_model

    entry = import_model(
        args.source,
        name=args.name,
        licence=args.licence,
        provenance=args.provenance,
        registry=_registry(args),
        overwrite=args.overwrite,
        as_published=args.as_published,
    )
    print(
        f"registered {entry.name}: {entry.task} ({entry.format}), classes {entry.classes}, "
        f"{len(entry.sha256)} file(s), sha256 {entry.checksum[:12]}…"
    )
    return 0


def _info(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from napari_mitosis.models.checkpoint import read_card

    registry = _registry(args)
    try:
        entry = registry.get(args.name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    changed = registry.verify(args.name)
    record = {
        "entry": asdict(entry),
        "checksum": entry.checksum,
        "intact": not changed,
        "changed_files": changed,
        "card": asdict(read_card(registry.path(args.name))),
    }
    print(json.dumps(record, indent=1, default=str))
    return 1 if changed else 0


def _remove(args: argparse.Namespace) -> int:
    registry = _registry(args)
    try:
        registry.remove(args.name)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    print(f"removed {args.name} from {registry.root}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from napari_mitosis.models.card import card_schema

    print(json.dumps(card_schema(), indent=1, ensure_ascii=False))
    return 0


def register(command: CommandAdder) -> None:
    group = command("models", "the local model registry: list, import, info, remove")
    group.add_argument(
        "--registry",
        default=None,
        help="registry folder (default: $NAPARI_MITOSIS_MODELS, else the user cache folder)",
    )
    actions = group.add_subparsers(dest="action", required=True, help="what to do")

    def action(name: str, summary: str) -> argparse.ArgumentParser:
        return actions.add_parser(
            name, help=summary, description=summary, formatter_class=HelpFormatter
        )

    ls = action("list", "registered models, their task, format, classes and input")
    ls.add_argument("--task", choices=("classification", "segmentation", "detection"))
    ls.add_argument("--json", action="store_true", help="the entries as JSON")
    ls.set_defaults(run=_list)

    im = action("import", "copy a model into the registry, recording its checksums")
    im.add_argument(
        "source",
        help="a .safetensors checkpoint, a WSInfer folder, a TorchScript/ONNX file with its "
        ".card.json, hf://owner/repo[@revision] (downloaded; needs huggingface_hub), or a "
        f"published model's name, downloaded: {', '.join(PUBLISHED_NAMES)}",
    )
    im.add_argument(
        "--as",
        dest="as_published",
        choices=PUBLISHED_NAMES,
        help="the source file is this published model (a copy you already have)",
    )
    im.add_argument("--name", help="the name commands take as --model (default: its own)")
    im.add_argument("--licence", default="", help="the model's licence, recorded")
    im.add_argument("--provenance", default="", help="where it comes from (default: its card)")
    im.add_argument("--overwrite", action="store_true", help="replace a model of that name")
    im.set_defaults(run=_import)

    info = action("info", "a registered model's record and card; exit 1 if a file changed")
    info.add_argument("name", help="a registered model's name")
    info.set_defaults(run=_info)

    rm = action("remove", "delete a registered model")
    rm.add_argument("name", help="a registered model's name")
    rm.set_defaults(run=_remove)

    schema = action("schema", "the JSON Schema of model card files (*.card.json)")
    schema.set_defaults(run=_schema)
