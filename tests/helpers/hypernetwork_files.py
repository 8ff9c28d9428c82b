"""Random hypernetwork files in A1111's `.pt` layout, written without Easel's module code.

The key indices are worked out here on their own (Linear, then activation, LayerNorm,
dropout slots, as A1111's `HypernetworkModule` lays them out), so that loading such a
file through `modules.networks` checks our layout against an independent one.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch

PARAMETRIC_ACTIVATIONS = {"prelu": 1}  # activations with a weight: its element count


def mlp_state(dim: int, *, layer_structure=(1, 2, 1), activation=None, layer_norm=False,
              activate_output=False, dropout_structure=None, generator, scale=0.2):
    """One MLP's state dict with keys at A1111's Sequential indices."""
    widths = [int(dim * f) for f in layer_structure]
    dropout = dropout_structure or [0] * len(widths)
    state, index = OrderedDict(), 0
    def randn(*shape):
        return torch.randn(*shape, generator=generator) * scale

    for i in range(len(widths) - 1):
        out_width, in_width = widths[i + 1], widths[i]
        state[f"linear.{index}.weight"] = randn(out_width, in_width)
        state[f"linear.{index}.bias"] = randn(out_width)
        index += 1
        if activation not in (None, "linear") and (i < len(widths) - 2 or activate_output):
            if activation in PARAMETRIC_ACTIVATIONS:
                state[f"linear.{index}.weight"] = torch.rand(PARAMETRIC_ACTIVATIONS[activation],
                                                             generator=generator)
            index += 1
        if layer_norm:
            state[f"linear.{index}.weight"] = 1 + randn(out_width)
            state[f"linear.{index}.bias"] = randn(out_width)
            index += 1
        if dropout[i + 1] > 0:
            index += 1
    return state


def a1111_hypernetwork(dims, *, seed: int = 0, name: str = "hn", layer_structure=(1, 2, 1),
                       activation="relu", layer_norm=False, activate_output=False,
                       use_dropout=False, last_layer_dropout=False, dropout_structure=None,
                       scale=0.2, write_structure_keys=True) -> dict:
    """The dict A1111's `Hypernetwork.save` writes, with random MLPs for `dims`."""
    generator = torch.Generator().manual_seed(seed)
    if dropout_structure is None and use_dropout:
        n = len(layer_structure)
        dropout_structure = [0] + [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0] + [0]
    options = dict(layer_structure=layer_structure, activation=activation, layer_norm=layer_norm,
                   activate_output=activate_output, dropout_structure=dropout_structure)
    data: dict = {dim: (mlp_state(dim, generator=generator, scale=scale, **options),
                        mlp_state(dim, generator=generator, scale=scale, **options))
                  for dim in dims}
    if write_structure_keys:
        data.update(layer_structure=list(layer_structure), activation_func=activation,
                    is_layer_norm=layer_norm, weight_initialization="Normal",
                    use_dropout=use_dropout, activate_output=activate_output,
                    last_layer_dropout=last_layer_dropout)
        if dropout_structure is not None:
            data["dropout_structure"] = list(dropout_structure)
    data.update(name=name, step=1000, sd_checkpoint="abcdef1234", sd_checkpoint_name="tiny",
                optional_info=None)
    return data


def write_hypernetwork(path: Path, data: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(data, path)
    return path
