"""Tensors out of checkpoints that pickle more than tensors, without running their code.

A PyTorch Lightning ``.ckpt`` (the MIDOG 2025 reference detector ships one) pickles its
``state_dict`` beside hyper-parameters, optimizer and callback states, whose classes
``torch.load(weights_only=True)`` refuses. Unpickling them for real imports and calls
whatever the file names: a file can run any code. Here every global outside a short
allow-list (tensor rebuilding and plain containers, what torch's own weights-only loader
allows) becomes an inert placeholder: constructing, reducing or filling one stores its
arguments and does nothing else. Only tensors are kept.
"""

from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import torch

#: (module, name) of the globals a checkpoint may really call: torch's tensor rebuilding
#: and plain containers (as torch's weights-only unpickler allows).
ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._utils", "_rebuild_qtensor"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"),
    ("torch", "Tensor"),
    ("torch.nn.parameter", "Parameter"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "complex"),
}


class Inert:
    """What an unknown class or function in a checkpoint becomes: it keeps what it is
    given and never runs anything."""

    qualified = "unknown"

    def __new__(cls, *args: Any, **kwargs: Any) -> Inert:
        instance = object.__new__(cls)
        instance.__dict__["args"] = args
        return instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEMS on a dict subclass
        self.__dict__.setdefault("items", {})[key] = value

    def append(self, value: Any) -> None:  # APPENDS on a list subclass
        self.__dict__.setdefault("items", []).append(value)

    def extend(self, values: Any) -> None:
        self.__dict__.setdefault("items", []).extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.qualified}>"


def _placeholder(module: str, name: str) -> type[Inert]:
    return type(name, (Inert,), {"qualified": f"{module}.{name}"})


class InertUnpickler(pickle.Unpickler):
    """An unpickler whose globals outside `ALLOWED` are inert placeholders."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)  # dtypes are values, not code
        return _placeholder(module, name)


class _Module:
    """What `torch.load` takes as ``pickle_module``."""

    Unpickler = InertUnpickler
    load = pickle.load
    __name__ = "napari_mitosis.models.inert_pickle"


def read_tensors(path: str | Path) -> Any:
    """The checkpoint's object tree with every unknown class inert (no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_Module)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({err})") from None


def checkpoint_state_dict(path: str | Path, *, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``state_dict`` (a Lightning ``.ckpt``, or a file that
    is a state dict itself), ``prefix`` (Lightning's module attribute) stripped."""
    tree = read_tensors(path)
    state = tree.get("state_dict", tree) if isinstance(tree, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds no state_dict (found {type(tree).__name__})")
    tensors = collections.OrderedDict()
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            tensors[key[len(prefix) :] if prefix and key.startswith(prefix) else key] = value
    if not tensors:
        raise ValueError(f"{path}: its state_dict holds no tensors")
    return tensors
