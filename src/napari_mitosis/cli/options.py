"""What the commands share: the help format, common options and their parsing.

Choices are spelled out here so ``--help`` and every command start without importing torch
(tests check they equal the core's own lists).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: ``command(name, summary)`` → a sub-parser with our help format; each group registers with it.
CommandAdder = Callable[[str, str], argparse.ArgumentParser]

BACKBONES = ("mobilenet_v3", "resnet50_v2", "vgg16")
ARCHITECTURES = (
    "small_cnn",
    "wide_resnet",
    "inception_v3",
    "two_tower",
    "resnet18",
    "resnet50",
    "densenet121",
    "efficientnet_b0",
    "convnext_tiny",
)
MONITORED = ("auc", "f1", "f_med", "loss")
TTA_HELP = (
    "average the flips the model trained on (the 8 rotations/flips; left-right only for "
    "a model trained with --flips horizontal); default: as the model was trained "
    "(train-classifier --tta)"
)


def add_tta(parser: argparse.ArgumentParser) -> None:
    """``--tta`` / ``--no-tta``; neither: what the model's card says."""
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None, help=TTA_HELP)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` gives each option's default after its help, except where there is none to
    give (None, off flags, empty lists) or the help already says what the default is."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default
        nothing = default is None or default is False or default in ((), "")
        if nothing or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


IMAGE_HELP = "a slide (SVS, NDPI, MRXS, pyramidal TIFF…) or a plain image (PNG, JPEG, TIFF)"


def device_option(text: str) -> str:
    """``--device`` checked for its form when parsed; ``auto`` stays as it is and is resolved
    where the model is loaded (`models.inference_model.pick_device`, the one place)."""
    if text == "auto" or re.fullmatch(r"(cpu|cuda|mps)(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device: auto, cpu, cuda or cuda:N")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        default="auto",
        type=device_option,
        help="auto (the GPU when PyTorch sees one, else the CPU), cuda, cuda:N or cpu",
    )


def add_mpp(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mpp",
        type=float,
        help="µm per pixel of the image, used only when its file does not say "
        "(one that says keeps its own, with a warning)",
    )


def add_stain(parser: argparse.ArgumentParser) -> None:
    """Stain augmentation and normalisation, shared by every trainer."""
    parser.add_argument(
        "--hed-jitter",
        type=float,
        default=0.05,
        help="σ of the H&E stain jitter: each stain's concentration scaled by 1 ± σ and "
        "shifted by ± σ (Tellez et al. 2018); 0 turns it off; grey images get none",
    )
    parser.add_argument(
        "--stain-norm",
        choices=("none", "reinhard", "macenko"),
        default="none",
        help="normalise every image to --stain-reference's stain, in training and, through "
        "the model card, at prediction",
    )
    parser.add_argument("--stain-reference", type=Path, help="with --stain-norm: an image file")


def stain_options(args: argparse.Namespace) -> dict[str, Any]:
    """The `StainTraining` fields from `add_stain`'s options."""
    return {
        "hed_jitter": args.hed_jitter,
        "stain_normalisation": None if args.stain_norm == "none" else args.stain_norm,
        "stain_reference": str(args.stain_reference) if args.stain_reference else None,
    }


def add_recipe(parser: argparse.ArgumentParser, command: str) -> None:
    """``--recipe FILE``: the command's options from a YAML file; flags given override it."""
    parser.add_argument(
        "--recipe",
        type=Path,
        help="a YAML file of this command's options (recipes/*.yaml); flags given override it",
    )
    parser.set_defaults(recipe_parser=parser, recipe_command=command)


def read_recipe(path: Path, parser: argparse.ArgumentParser, command: str) -> dict[str, Any]:
    """A recipe's options as parser defaults; unknown options and another command's recipe
    are errors that name the file."""
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a readable YAML recipe ({err})") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of option: value")
    recipe = {str(k).replace("-", "_"): v for k, v in recipe.items()}
    wanted = recipe.pop("command", command)
    recipe.pop("description", None)
    if wanted != command:
        raise ValueError(f"{path}: is a recipe for {wanted}, not {command}")
    options = {a.dest: a for a in parser._actions if a.option_strings}
    unknown = sorted(set(recipe) - set(options) - {"help"})
    if unknown:
        raise ValueError(f"{path}: {command} has no option {', '.join(unknown)}")
    for key, value in recipe.items():  # the types a flag would have given
        action = options[key]
        if action.type is not None and value is not None:
            convert = action.type
            recipe[key] = [convert(v) for v in value] if isinstance(value, list) else convert(value)
    return recipe


def add_overwrite(parser: argparse.ArgumentParser, what: str = "existing outputs") -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help=f"replace {what} (default: stop, touch nothing)"
    )


def add_model(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument(
        "--model",
        type=Path,
        required=True,
        help=f"{task}: a .safetensors checkpoint, a WSInfer model folder, a TorchScript/ONNX "
        "file with its .card.json, or a registered model's name (`models list`); its card "
        "gives the input size and µm/px",
    )


def add_training(parser: argparse.ArgumentParser, *, batch: int, lr: float) -> None:
    """Options every trainer shares (seeded split, batch, learning rate, device, overwrite)."""
    parser.add_argument("--batch-size", type=int, default=batch, help="examples per step")
    parser.add_argument("--lr", type=float, default=lr, help="learning rate")
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of the data held out for validation (early stopping, the kept checkpoint)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seeds the split, sampling and initial weights"
    )
    add_device(parser)
    add_overwrite(parser, "an existing checkpoint")


def add_steps(parser: argparse.ArgumentParser, *, crop: int) -> None:
    """Step-based training (U-Net, detector): how long, how often to validate, when to stop."""
    parser.add_argument("--steps", type=int, default=2000, help="most training steps")
    parser.add_argument(
        "--eval-every", type=int, default=100, help="validate every N steps, keep the best"
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=5,
        help="stop after this many validations without improvement",
    )
    parser.add_argument("--crop", type=int, default=crop, help="training crop side (px)")


def add_tiling(parser: argparse.ArgumentParser, *, batch: int) -> None:
    parser.add_argument(
        "--overlap", type=int, default=64, help="px shared by neighbouring tiles (stitched)"
    )
    parser.add_argument("--batch-size", type=int, default=batch, help="tiles per forward pass")


def add_device_tiles(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device-tiles",
        action="store_true",
        help="decode JPEG tiles and cut patches on the model's device (nvJPEG on a GPU) "
        "where the slide is a TIFF we decode; other slides read as usual",
    )


def parse_region(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    values = [int(v) for v in text.split(",")]
    if len(values) != 4:
        raise ValueError(f"--region takes y0,x0,y1,x1 in level-0 pixels, got {text!r}")
    return values[0], values[1], values[2], values[3]


def slide_split_options(slide: Path, args: argparse.Namespace, expects: str) -> dict[str, Any]:
    """What training from one slide needs of the command line (`engine.region_split`):
    its ``--annotations`` file (an error saying ``expects`` when missing), fields of
    4 × ``--crop`` px (at least 512), the validation share, seed and µm/px."""
    if args.annotations is None or not args.annotations.is_file():
        raise ValueError(f"{slide}: a slide trains with --annotations ({expects})")
    return {
        "field": max(4 * args.crop, 512),
        "val_fraction": args.val_fraction,
        "seed": args.seed,
        "mpp": args.mpp,
    }


def slide_provenance(
    slide: Path, annotations: Path, count: int, split: str, what: str = "figures"
) -> str:
    """The card's note on where a slide-trained model's examples came from."""
    return f"slide {slide.name}, annotations {annotations.name} ({count} {what}; {split})"


#: how the epoch line names each metric
METRIC_NAMES = {"auc": "AUC", "f1": "F1", "f_med": "F_med", "loss": "loss"}


def epoch_printer(monitor: str) -> Any:
    """The epoch line, the monitored validation metric first (the Train widget plots it)."""
    order = [monitor, *(m for m in ("auc", "f1", "f_med") if m != monitor)]

    def show(epoch: int, total: int, r: dict[str, float]) -> None:
        values = "  ".join(f"{METRIC_NAMES[m]} {r[f'val_{m}']:.3f}" for m in order)
        fold = f"fold {r['fold']}/{r['folds']} " if "fold" in r else ""
        print(
            f"{fold}epoch {epoch}/{total}: loss {r['train_loss']:.3f}  validation {values}  "
            f"({r['seconds']:.0f} s)",
            flush=True,
        )

    return show
