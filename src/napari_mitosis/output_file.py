"""Atomic, non-clobbering output files: every writer goes through `atomic_output`."""

from __future__ import annotations

import os
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
