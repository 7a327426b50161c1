"""The ``napari-mitosis`` command line: every step works without a napari window.

One module per command group, each adding its commands with ``register``; ``options``
holds what they share. ``main`` is the console entry point.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from napari_mitosis.cli import (
    classification,
    classify,
    cohort,
    demo,
    detection,
    midog,
    models,
    review,
    segmentation,
    serve,
    slides,
    subtype,
)
from napari_mitosis.cli.options import HelpFormatter, read_recipe
from napari_mitosis.io.errors import OutputExistsError, SlideError

#: Command groups in the order ``--help`` lists them.
GROUPS = (
    slides,
    demo,
    segmentation,
    detection,
    midog,
    subtype,
    review,
    classification,
    classify,
    cohort,
    models,
    serve,
)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: every group's commands under one parser."""
    parser = argparse.ArgumentParser(
        prog="napari-mitosis",
        description="Whole-slide breast-cancer histopathology: slides, mitoses, tumour maps.",
        formatter_class=HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, summary: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=summary, formatter_class=HelpFormatter
        )

    for group in GROUPS:
        group.register(command)
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, with a training command's ``--recipe`` options as its defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None) is not None:
        recipe = read_recipe(args.recipe, args.recipe_parser, args.recipe_command)
        args.recipe_parser.set_defaults(**recipe)
        args = parser.parse_args(argv)  # flags given still win over the recipe
        args.recipe_options = recipe
    return args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        with _terminate_as_interrupt():
            args = parse(argv)
            code = int(args.run(args))
            sys.stdout.flush()  # a reader gone (`| head`) is met here, not at exit
            return code
    except (SlideError, OutputExistsError, FileNotFoundError, ValueError) as err:
        print(f"napari-mitosis: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("napari-mitosis: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """The reader of our output went away (``| head``): stop quietly, as shell tools do.

    Python would still try to flush stdout at exit and print a second traceback; pointing
    the descriptor at /dev/null first keeps that flush silent. 141 = 128 + SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (the Train widget's Cancel, a scheduler ending a job) unwinds like Ctrl-C,
    so temporary outputs and cross-validation folders are removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
