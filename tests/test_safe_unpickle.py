"""The allow-list unpickler: real SD .ckpt layouts load, anything else is refused unexecuted."""

from __future__ import annotations

import builtins
import collections
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch

from modules.models.errors import ModelLoadError, UnsafePickleError
from modules.models.safe_unpickle import LightningCheckpointStub, load_pickle_checkpoint

LIGHTNING_MODULES = ("pytorch_lightning", "pytorch_lightning.callbacks",
                     "pytorch_lightning.callbacks.model_checkpoint")


class SystemCall:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class OpenFile:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (builtins.open, (str(self.sentinel), "w"))


@pytest.mark.parametrize("payload", [SystemCall, OpenFile])
@pytest.mark.parametrize("container", ["zip", "legacy", "plain_pickle"])
def test_malicious_pickles_refused(tmp_path: Path, payload, container: str) -> None:
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    obj = {"state_dict": {"w": torch.ones(2)}, "x": payload(sentinel)}
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        obj["state_dict"] = {"w": [1.0, 2.0]}  # plain pickle: no torch storages
        path.write_bytes(pickle.dumps(obj, protocol=4))  # STACK_GLOBAL opcodes
    refused = r"refusing to unpickle global '(posix\.system|builtins\.open|io\.open)'"
    with pytest.raises(UnsafePickleError, match=refused) as info:
        load_pickle_checkpoint(path)
    assert str(path) in str(info.value)
    assert not sentinel.exists()


def save_lightning_checkpoint(path: Path) -> collections.OrderedDict:
    """torch.save a training-style checkpoint holding a (fake) Lightning callback."""
    modules = {name: types.ModuleType(name) for name in LIGHTNING_MODULES}

    class ModelCheckpoint:
        def __init__(self) -> None:
            self.monitor = "val/loss"
            self.best_model_score = torch.tensor(0.25)

    ModelCheckpoint.__module__ = LIGHTNING_MODULES[-1]
    ModelCheckpoint.__qualname__ = "ModelCheckpoint"
    modules[LIGHTNING_MODULES[-1]].ModelCheckpoint = ModelCheckpoint
    state_dict = collections.OrderedDict(
        [("model.diffusion_model.out.2.weight", torch.randn(4, 8, 3, 3)),
         ("cond_stage_model.transformer.text_model.embeddings.position_ids",
          torch.arange(77)[None])]
    )
    sys.modules.update(modules)
    try:
        torch.save({"state_dict": state_dict, "global_step": 470000, "epoch": 5,
                    "callbacks": {ModelCheckpoint: {"best_model_score": 0.1}},
                    "checkpoint_callback": ModelCheckpoint()}, path)
    finally:
        for name in LIGHTNING_MODULES:
            del sys.modules[name]
    return state_dict


def test_lightning_checkpoint_loads(tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt"
    state_dict = save_lightning_checkpoint(path)
    assert "pytorch_lightning" not in sys.modules
    loaded = load_pickle_checkpoint(path)
    assert loaded["global_step"] == 470000
    assert isinstance(loaded["state_dict"], collections.OrderedDict)
    for key, tensor in state_dict.items():
        assert torch.equal(loaded["state_dict"][key], tensor)
    callback = loaded["checkpoint_callback"]
    assert isinstance(callback, LightningCheckpointStub)
    assert callback.state["monitor"] == "val/loss"
    assert "pytorch_lightning" not in sys.modules  # the stub never imports the real package


def test_legacy_format_loads(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    torch.save({"state_dict": {"a": torch.arange(6.0).reshape(2, 3)}}, path,
               _use_new_zipfile_serialization=False)
    assert torch.equal(load_pickle_checkpoint(path)["state_dict"]["a"],
                       torch.arange(6.0).reshape(2, 3))


def test_unexpected_zip_entry_refused(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "odd.ckpt"
    torch.save({"a": torch.ones(1)}, path)
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("archive/payload.py", "print('hi')")
    with pytest.raises(ModelLoadError, match="unexpected entry 'archive/payload.py'"):
        load_pickle_checkpoint(path)


def test_garbage_and_empty(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file"):
        load_pickle_checkpoint(empty)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(ModelLoadError, match=str(garbage)):
        load_pickle_checkpoint(garbage)
