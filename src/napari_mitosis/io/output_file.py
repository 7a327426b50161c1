"""Atomic, non-clobbering output files: every writer goes through `atomic_output`."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_mitosis.io.errors import OutputExistsError


def _new_file(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def _new_folder(path: Path) -> None:
    path.mkdir(0o777)


def _reserve(path: Path, create: Callable[[Path], None]) -> Path:
    """A new hidden ``.partial`` name beside ``path``, created by ``create``.

    Created with the permissions the user's umask gives (0644 / 0755 for the usual 022), as
    any tool's output would be: ``mkstemp``/``mkdtemp`` would make the result private
    (0600 / 0700), unreadable to colleagues, QuPath under another account or a web server.
    """
    for _ in range(100):
        candidate = path.parent / f".{path.name}.{secrets.token_hex(4)}.partial"
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"{path.parent}: no free temporary name for {path.name}")


@contextmanager
def atomic_output(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it becomes ``path`` only if the block succeeds.

    An exception (including a cancelled run) removes the temporary file, so the user is
    left with either the old file or the complete new one, never a half-written one.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory; give a file name to write")
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")
    tmp = _reserve(path, _new_file)
    try:
        yield tmp
        if overwrite:
            tmp.replace(path)
        else:
            # link() fails if someone created `path` meanwhile: still no clobbering.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExistsError(path) from None
            tmp.unlink()
    finally:
        tmp.unlink(missing_ok=True)


def refuse_existing(paths: Iterable[Path], *, overwrite: bool) -> None:
    """Raise before any work starts if an output exists and may not be replaced, so a
    refusal never leaves a partial set of outputs behind."""
    for path in paths:
        if Path(path).exists() and not overwrite:
            raise OutputExistsError(path)


@contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it becomes ``path`` only if the block succeeds.

    For outputs that are folders (OME-Zarr, a slide's results): readers and resumed runs
    see the complete folder or none. A killed process leaves only a hidden ``.partial``
    folder, which `stale_partials` finds for cleaning.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path.parent}: output folder does not exist")
    tmp = _reserve(path, _new_folder)
    try:
        yield tmp
        old = None
        if path.exists():  # overwrite: move the old one aside, then swap in the new one
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            path.rename(old / path.name)
        try:
            tmp.rename(path)
        except OSError:
            if path.exists():
                raise OutputExistsError(path) from None
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stale_partials(folder: str | Path) -> list[Path]:
    """Temporary outputs left in ``folder`` by a killed run (safe to delete)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.name.startswith(".") and p.suffix in (".partial", ".old")
    )
