"""Atomic, non-clobbering output files: every writer goes through `atomic_output`."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from napari_mitosis.errors import OutputExistsError


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
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
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
