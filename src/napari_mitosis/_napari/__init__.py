"""The napari layer: reader, writers, sample data and widgets, named in ``napari.yaml``.

It only converts between napari layers and the core; nothing in the core imports it.

One process-level guard runs when it is imported, and again when a widget is made
(`keep_triton_from_mesa`; the viewer may first draw after the import): in a napari that
draws with Mesa's OpenGL (software rendering, remote desktops, Xvfb), Mesa has loaded its
LLVM, and the Triton that CUDA builds of PyTorch bring (imported by torchvision) loads
another LLVM beside it and crashes the process. Our models never need Triton.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def keep_triton_from_mesa(maps: Path = Path("/proc/self/maps")) -> bool:
    """Block ``import triton`` when Mesa's LLVM is loaded and Triton is not yet; True if
    it did. PyTorch then sees no Triton (``torch.compile``'s GPU code generation is off in
    this process); everything napari-mitosis runs is unaffected."""
    if "triton" in sys.modules:
        return False
    try:
        loaded = maps.read_text()
    except OSError:  # not Linux: no Mesa-and-Triton clash to avoid
        return False
    if "libLLVM" not in loaded:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # import triton → ImportError
    log.info("Triton left unloaded: Mesa's OpenGL has loaded LLVM in this process")
    return True


keep_triton_from_mesa()
