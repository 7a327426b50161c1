"""The README's and docs' code blocks, read with Sybil and run as written.

Sybil parses each page into its fenced ``bash`` and ``python`` blocks, in order, with one
namespace per page (a later block sees an earlier one's names), and reads the directives a
page writes in HTML comments, visible in the Markdown and hidden on the site:

- ``<!-- skip: next "why" -->`` — the next block is not run here (a GPU, the network, a
  long training); the reason is printed in the suite's summary.
- ``<!-- docs-background: URL -->`` — the next ``bash`` block is a server: it is started in
  the background and the page goes on once URL answers; it is stopped when the page ends.
- ``<!-- docs-shorten: "--steps 4" "why" -->`` — the next ``bash`` block is a training
  that takes minutes as written: it runs with these options added to each of its
  ``napari-mitosis train-*`` commands (the last of a repeated option wins, so ``--steps
  300`` becomes 4). Everything else runs as written — reading the data, building the
  model, the training loop, evaluation, writing and registering the checkpoint — and the
  summary lists the block as shortened, with the reason.

Chosen over mktestdocs (no per-page namespace, no skip directive, Python/bash only by a
hand-written loop) and pytest-examples (Python only, formatting rather than running):
Sybil keeps blocks in page order with a shared namespace, has the skip directive built in,
and takes an evaluator per language, so ``bash`` blocks run in a real shell.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from unittest import SkipTest

from sybil import Document, Example, Region, Sybil
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import DirectiveInHTMLCommentLexer

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_TIMEOUT_S = 600


@dataclass
class Tally:
    """What the docs' blocks did in this run: ran, or skipped and why."""

    ran: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    shortened: list[tuple[str, str]] = field(default_factory=list)


TALLY = Tally()


class BackgroundParser:
    """``<!-- docs-background: URL -->``: the next shell block serves until the page ends."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer(directive="docs-background")

    def __call__(self, document: Document) -> Iterable[Region]:
        for lexed in self.lexer(document):
            url = lexed.lexemes["arguments"].strip()
            yield Region(lexed.start, lexed.end, url, self.evaluate)

    @staticmethod
    def evaluate(example: Example) -> None:
        example.namespace["_background_url"] = example.parsed


class ShortenParser:
    """``<!-- docs-shorten: "OPTIONS" "why" -->``: the next shell block's trainings run
    with OPTIONS added."""

    def __init__(self) -> None:
        self.lexer = DirectiveInHTMLCommentLexer(directive="docs-shorten")

    def __call__(self, document: Document) -> Iterable[Region]:
        for lexed in self.lexer(document):
            words = shlex.split(lexed.lexemes["arguments"])
            if len(words) != 2 or not words[1].strip():
                raise ValueError(
                    f"{document.path}: docs-shorten takes the options and why, both quoted"
                )
            yield Region(lexed.start, lexed.end, ShortenRequest(*words), self.evaluate)

    @staticmethod
    def evaluate(example: Example) -> None:
        example.namespace["_shorten"] = example.parsed


@dataclass(frozen=True)
class ShortenRequest:
    options: str
    why: str


TRAINING = re.compile(r"^(\s*napari-mitosis train-[a-z]+\b[^#]*?)(\s*#.*)?$")


def shortened(code: str, options: str) -> str:
    """``code`` with ``options`` appended to each ``napari-mitosis train-*`` command (its
    continuation lines joined first); an error if there is none."""
    lines = re.sub(r"\s*\\\n\s*", " ", code).splitlines()
    out, changed = [], 0
    for line in lines:
        match = TRAINING.match(line)
        if match:
            line = f"{match.group(1).rstrip()} {options}{match.group(2) or ''}"
            changed += 1
        out.append(line)
    if not changed:
        raise ValueError(
            f"docs-shorten: the next block has no napari-mitosis train-* command:\n{code}"
        )
    return "\n".join(out) + "\n"


def run_shell(example: Example) -> None:
    """A ``bash`` block in the page's folder, as a user's shell runs it (``set -e``)."""
    ns = example.namespace
    code = str(example.parsed)
    where = f"{Path(example.path).name}, line {example.line}"
    request = ns.pop("_shorten", None)
    if request is not None:
        code = shortened(code, request.options)
        TALLY.shortened.append((f"{Path(example.path).name}:{example.line}", request.why))
    url = ns.pop("_background_url", None)
    if url is not None:
        log = Path(ns["_cwd"]) / f".background-{example.line}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                ["bash", "-c", code], cwd=ns["_cwd"], env=ns["_env"], stdout=out, stderr=out
            )
        ns["_processes"].append(process)
        _wait_for(url, process, log, where)
        return
    done = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", code],
        cwd=ns["_cwd"],
        env=ns["_env"],
        capture_output=True,
        text=True,
        timeout=SHELL_TIMEOUT_S,
        check=False,
    )
    ns["_outputs"].append(done.stdout)
    if done.returncode != 0:
        raise AssertionError(
            f"{where}: exit {done.returncode}\n--- stdout\n{done.stdout[-3000:]}"
            f"\n--- stderr\n{done.stderr[-4000:]}"
        )


def _wait_for(url: str, process: subprocess.Popen, log: Path, where: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{where}: the server ended ({process.returncode}):\n{log.read_text()}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{where}: {url} did not answer in 120 s:\n{log.read_text()}")


SYBIL = Sybil(
    parsers=[
        SkipParser(),
        BackgroundParser(),
        ShortenParser(),
        PythonCodeBlockParser(),
        CodeBlockParser(language="bash", evaluator=run_shell),
        CodeBlockParser(language="console", evaluator=run_shell),
    ],
    path=str(ROOT),
)


DIRECTIVES = (BackgroundParser.evaluate, ShortenParser.evaluate)


def is_code(example: Example) -> bool:
    return example.region.evaluator not in DIRECTIVES and not isinstance(example.parsed, tuple)


def run_page(page: Path, namespace: dict) -> tuple[int, list[str]]:
    """Every block of ``page`` in order, in ``namespace``; returns (blocks run, skip reasons).
    A failing block raises, naming the page and line."""
    document = SYBIL.parse(page)
    document.namespace.update(namespace)
    ran, skipped = 0, []
    for example in document.examples():
        name = f"{page.name}:{example.line}"
        try:
            example.evaluate()
        except SkipTest as skip:
            skipped.append(str(skip))
            TALLY.skipped.append((name, str(skip)))
            continue
        if is_code(example):
            ran += 1
            TALLY.ran.append(name)
    return ran, skipped


def block_census() -> dict[str, tuple[int, int, int]]:
    """Per page: (code blocks, of which marked to skip, of which run shortened), read from
    the Markdown alone."""
    census = {}
    for page in PAGES:
        document = SYBIL.parse(page)
        blocks = skips = shorts = 0
        skip_next = shorten_next = False
        for example in document.examples():
            if example.region.evaluator is ShortenParser.evaluate:
                shorten_next = True
                continue
            if isinstance(example.parsed, tuple):  # a skip directive: (action, reason)
                action, reason = example.parsed
                if action != "next" or not (reason or "").strip(" \"'"):
                    raise ValueError(
                        f"{page.name}, line {example.line}: skip the next block, saying why"
                    )
                skip_next = True
                continue
            if example.region.evaluator is BackgroundParser.evaluate:
                continue
            blocks += 1
            skips += skip_next
            shorts += shorten_next and not skip_next
            skip_next = shorten_next = False
        census[page.name] = (blocks, skips, shorts)
    return census
