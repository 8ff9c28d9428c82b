"""The streaming safetensors writer: readable by safetensors and our strict reader, atomic."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from modules.models.safetensors_io import TensorInfo, load_safetensors, read_safetensors_header
from modules.models.safetensors_writer import SafetensorsWriter

TENSORS = {
    "w": torch.randn(3, 5),
    "half": torch.randn(4).half(),
    "bf": torch.randn(2, 2).bfloat16(),
    "ids": torch.arange(7),
    "scalar": torch.tensor(1.5),
    "empty": torch.zeros(0, 3),
}


def entries():
    return [(name, TensorInfo.of(tensor)) for name, tensor in TENSORS.items()]


def test_round_trip_through_both_readers(tmp_path):
    path = tmp_path / "out.safetensors"
    with SafetensorsWriter(path, entries(), {"format": "pt", "note": "x"}) as writer:
        for name, tensor in TENSORS.items():
            writer.write(name, tensor)
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0  # padded header
    assert read_safetensors_header(path).metadata == {"format": "pt", "note": "x"}
    ours = load_safetensors(path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt", "note": "x"}
        theirs = {name: handle.get_tensor(name) for name in handle.keys()}
    for name, tensor in TENSORS.items():
        assert torch.equal(ours[name], tensor) and ours[name].dtype == tensor.dtype
        assert torch.equal(theirs[name], tensor)
    assert list(tmp_path.iterdir()) == [path]


def test_wrong_tensor_or_missing_tensors_leave_no_file(tmp_path):
    path = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match=r"expected 'w' F32\[3, 5\], got 'w' F32\[5, 3\]"):
        with SafetensorsWriter(path, entries()) as writer:
            writer.write("w", torch.zeros(5, 3))
    with pytest.raises(ValueError, match="only 1 of 6 tensors were written"):
        with SafetensorsWriter(path, entries()) as writer:
            writer.write("w", TENSORS["w"])
    assert list(tmp_path.iterdir()) == []


def test_an_error_while_producing_keeps_the_old_file(tmp_path):
    path = tmp_path / "out.safetensors"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with SafetensorsWriter(path, entries()) as writer:
            writer.write("w", TENSORS["w"])
            raise RuntimeError("boom")
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
