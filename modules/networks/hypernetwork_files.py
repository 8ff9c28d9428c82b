"""Reading A1111 hypernetwork `.pt` files, trusting nothing in them.

Layout (docs/model-formats.md, "Hypernetworks"): a pickled dict whose integer keys are token
widths (768, 320, 640, 1280, 1024, ...), each holding a pair of state dicts (the k MLP,
then the v MLP) with keys `linear.N.weight` / `linear.N.bias` (old files:
`linear1.*` / `linear2.*`), plus the MLP's description: `layer_structure` (default
[1, 2, 1]), `activation_func` (default none), `is_layer_norm` (False),
`activate_output` (True when the key is missing), `dropout_structure`, or for older
files `use_dropout` / `last_layer_dropout`, and informational `name`, `step`,
`weight_initialization`, `sd_checkpoint`, `sd_checkpoint_name`, `optional_info`.

The file goes through the allow-list unpickler only. Every field is checked before
anything is built, and the MLPs are first built on the meta device: a file that claims
an absurd layer structure costs no memory and fails on its shapes with a message that
names the width, the MLP and the key. There is no documented `.safetensors` layout for
hypernetworks (A1111 and its descendants read `.pt` only), so none is accepted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.networks.hypernetwork import (
    ACTIVATIONS,
    NO_ACTIVATION,
    Hypernetwork,
    HypernetworkStructure,
)

# A1111's dropout probability when only `use_dropout` is stored.
LEGACY_DROPOUT = 0.3
OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
            "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}
INFO_KEYS = ("name", "step", "sd_checkpoint", "sd_checkpoint_name", "weight_initialization",
             "optional_info")


class HypernetworkError(ValueError):
    """A file that is not a usable hypernetwork; the message says why."""


def read_hypernetwork(path: str | os.PathLike[str], *, name: str | None = None) -> Hypernetwork:
    """Load, check and build the hypernetwork in `path` (float32, CPU, read-only)."""
    data = load_pickle_checkpoint(path, mmap=False)
    if not isinstance(data, dict):
        raise HypernetworkError(f"holds a {type(data).__name__}, not a hypernetwork dict")
    modules = {key: value for key, value in data.items()
               if isinstance(key, int) and not isinstance(key, bool)}
    if not modules:
        raise HypernetworkError("no MLPs (no integer width keys); not a hypernetwork file")
    for dim in modules:
        if dim <= 0:
            raise HypernetworkError(f"width key {dim} is not a positive width")
    structure = structure_of(data)
    with torch.device("meta"):
        network = Hypernetwork(name=name or Path(path).stem, dims=sorted(modules),
                               structure=structure)
    for dim, pair in modules.items():
        _load_pair(network, dim, pair)
    network.info = {key: data[key] for key in INFO_KEYS if _plain(data.get(key))}
    return network.float().eval().requires_grad_(False)


def structure_of(data: Mapping[str, Any]) -> HypernetworkStructure:
    """The MLP description, with A1111's defaults for missing keys; raises on bad values."""
    layers = _numbers(data.get("layer_structure", None) or [1, 2, 1], "layer_structure")
    if len(layers) < 2 or layers[0] != 1 or layers[-1] != 1 or min(layers) <= 0:
        raise HypernetworkError(f"layer_structure {list(layers)} must start and end with 1 "
                                "and hold positive numbers")
    activation = data.get("activation_func")
    if activation not in NO_ACTIVATION and activation not in ACTIVATIONS:
        raise HypernetworkError(f"unsupported activation_func {activation!r}")
    return HypernetworkStructure(
        layer_structure=layers, activation=activation,
        layer_norm=_flag(data, "is_layer_norm", False),
        activate_output=_flag(data, "activate_output", True),
        dropout_structure=_dropout_structure(data, len(layers)))


def _dropout_structure(data: Mapping[str, Any], length: int) -> tuple[float, ...]:
    """Where dropout slots sit: stored, or derived from `use_dropout` as A1111 does."""
    stored = data.get("dropout_structure")
    if stored is not None:
        values = _numbers(stored, "dropout_structure")
        if len(values) != length or any(not 0 <= p < 1 for p in values):
            raise HypernetworkError(f"dropout_structure {list(values)} needs {length} "
                                    "probabilities in [0, 1)")
        return values
    if not _flag(data, "use_dropout", False):
        return (0.0,) * length
    # Dropout after every hidden Linear; after the one before the output only when
    # `last_layer_dropout`; never after the output Linear.
    last = LEGACY_DROPOUT if _flag(data, "last_layer_dropout", False) else 0.0
    return (0.0, *([LEGACY_DROPOUT] * (length - 3)), last, 0.0)[:length]


def _load_pair(network: Hypernetwork, dim: int, pair: Any) -> None:
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise HypernetworkError(f"width {dim}: expected a (k, v) pair of state dicts")
    for label, module, state in zip(("k", "v"), network.pair(dim), pair, strict=True):
        if not isinstance(state, Mapping) or not all(isinstance(t, Tensor) for t in state.values()):
            raise HypernetworkError(f"width {dim} {label} MLP: not a state dict of tensors")
        state = {OLD_KEYS.get(key, key): tensor for key, tensor in state.items()}
        try:
            module.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as error:
            raise HypernetworkError(f"width {dim} {label} MLP does not fit its layer_structure: "
                                    f"{_first_problem(error)}") from None


def _first_problem(error: RuntimeError) -> str:
    lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()]
    return (lines[0] if lines else str(error)).rstrip(".")


def _numbers(value: Any, field: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in value):
        raise HypernetworkError(f"{field} must be a list of numbers, got {value!r:.80}")
    return tuple(float(x) for x in value)


def _flag(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise HypernetworkError(f"{key} must be true or false, got {value!r:.80}")
    return value


def _plain(value: Any) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)
