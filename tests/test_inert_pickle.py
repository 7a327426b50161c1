"""A Lightning-style checkpoint gives up its tensors and nothing else: a payload that
would run code on unpickling stays inert, unknown classes become placeholders."""

from __future__ import annotations

import argparse
import collections
import os
import pickle
from pathlib import Path

import pytest
import torch

from napari_mitosis.models.inert_pickle import Inert, checkpoint_state_dict, read_tensors


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


class _Config:  # a class of the publisher's code, which we never import
    learning_rate = 0.1


def test_a_lightning_checkpoint_gives_its_weights_and_runs_none_of_its_code(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    marker = tmp_path / "code-ran"
    checkpoint = {
        "state_dict": collections.OrderedDict(
            (f"model.{k}", v) for k, v in net.state_dict().items()
        ),
        "hyper_parameters": {"config": _Config(), "args": argparse.Namespace(lr=0.1)},
        "callbacks": {"payload": _RunsCode(marker)},
        "optimizer_states": [torch.optim.Adam(net.parameters()).state_dict()],
        "epoch": 3,
    }
    path = tmp_path / "detector.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError):  # what torch's own safe loader does
        torch.load(path, weights_only=True)
    state = checkpoint_state_dict(path)
    assert not marker.exists()  # os.system was never called
    fresh = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    fresh.load_state_dict(state)  # the "model." prefix is gone, every tensor is there
    for name, value in net.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)
    tree = read_tensors(path)
    payload = tree["callbacks"]["payload"]
    assert isinstance(payload, Inert) and payload.qualified.endswith(".system")
    assert isinstance(tree["hyper_parameters"]["config"], Inert) and tree["epoch"] == 3


def test_a_file_without_tensors_or_a_state_dict_is_refused_by_name(tmp_path: Path) -> None:
    torch.save({"epoch": 1}, tmp_path / "empty.ckpt")
    with pytest.raises(ValueError, match=r"empty\.ckpt: its state_dict holds no tensors"):
        checkpoint_state_dict(tmp_path / "empty.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.ckpt: not a readable PyTorch checkpoint"):
        checkpoint_state_dict(tmp_path / "junk.ckpt")
