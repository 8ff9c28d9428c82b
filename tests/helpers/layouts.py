"""Full-size layout checks: a real file's key layout (a fixture) against a meta-device model.

The fixtures (`tests/fixtures/*.tsv`, key<TAB>shape<TAB>dtype, one header line) hold the
names and shapes of a real checkpoint's tensors. `fixture_shapes` reads those under a
prefix; `assert_same_layout` asserts a model has exactly them, by name and shape, with
nothing left over on either side.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def fixture_shapes(name: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """The shapes of the fixture's tensors under `prefix`, keyed without it.

    Skips the test when the fixture is not there.
    """
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"fixture {path} is missing: the key layouts ship with the tests")
    shapes = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        if key.startswith(prefix):
            dims = shape.strip("[]")
            shapes[key[len(prefix):]] = tuple(int(d) for d in dims.split(",")) if dims else ()
    return shapes


def model_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of `model` (its state dict), by name."""
    return {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}


def assert_same_layout(model: torch.nn.Module, expected: dict[str, tuple[int, ...]]) -> None:
    """`model` has exactly the tensors `expected` names, each of that shape."""
    actual = model_shapes(model)
    assert sorted(set(expected) - set(actual)) == [], "file tensors the model lacks"
    assert sorted(set(actual) - set(expected)) == [], "model tensors the file lacks"
    wrong = {key: (actual[key], shape) for key, shape in expected.items() if actual[key] != shape}
    assert wrong == {}, "shape mismatches (model, file)"
