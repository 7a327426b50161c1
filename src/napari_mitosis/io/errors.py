"""Exceptions that name the file and what is wrong with it."""

from __future__ import annotations

from pathlib import Path


class SlideError(Exception):
    """A slide or image could not be opened or read; the message names the file."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The path does not exist (or is a directory where a file was expected)."""


class UnreadableFileError(SlideError, PermissionError):
    """The file exists but this user may not read it."""


class UnsupportedFormatError(SlideError):
    """The file exists but is not a slide or image format napari-mitosis reads."""


class CorruptSlideError(SlideError):
    """The file claims a supported format but its content is truncated or damaged."""


class MissingResolutionError(SlideError):
    """The slide does not say its µm/pixel, and what was asked of it needs one."""


class UnsuitableImageError(SlideError):
    """The image opens, but its pixels are not what the model reads (8-bit RGB)."""


class OutputExistsError(FileExistsError):
    """A writer refused to replace an existing file without ``overwrite=True``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(
            f"{self.path}: already exists; pass overwrite=True (--overwrite on the command "
            "line) to replace it"
        )
