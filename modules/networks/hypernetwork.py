"""Hypernetworks: small residual MLPs that change what attention's keys and values see.

NovelAI introduced them for Stable Diffusion (NovelAI, 2022, "NovelAI Improvements on
Stable Diffusion", https://blog.novelai.net/novelai-improvements-on-stable-diffusion-e10d38db82ac)
and A1111 made the `.pt` format everyone trains. For every attention layer the tokens
its keys and values are computed from (the text context in cross-attention, the pixel
tokens in self-attention) go through one MLP per token width, one for k and one for v:

    k source = c + mlp_k(c) * m,    v source = c + mlp_v(c) * m

with m the multiplier of the prompt tag. A width the file has no MLP for is left
unchanged. Several hypernetworks stack: each one transforms the k and v sources the
previous one produced (the k MLP sees the k source, the v MLP the v source).

MLP layout, kept index for index so that A1111's `linear.N.weight` keys load by name:
for each step i of `layer_structure` (multiples of the width; it starts and ends at 1)
a Linear, then the activation (not after the last Linear unless `activate_output`),
then a LayerNorm when `is_layer_norm`, then a dropout slot where
`dropout_structure[i + 1] > 0`. Dropout does nothing at inference, so its slot is an
`nn.Identity` that only keeps the indices right.

The modules are read-only once loaded and shared between jobs; the multiplier is an
argument of the call, never stored on a module. `HypernetworkStack` is the per-job
`ContextTransform` handed to the U-Net (`modules.nn.transformer`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

# Activation names as A1111 files spell them (lower-cased torch class names, plus "swish",
# which A1111 maps to Hardswish). "linear" or None means no activation.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU, "swish": nn.Hardswish,
    "hardswish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
    "silu": nn.SiLU, "mish": nn.Mish, "celu": nn.CELU, "selu": nn.SELU, "relu6": nn.ReLU6,
    "rrelu": nn.RReLU, "hardtanh": nn.Hardtanh, "hardsigmoid": nn.Hardsigmoid,
    "hardshrink": nn.Hardshrink, "softshrink": nn.Softshrink, "softplus": nn.Softplus,
    "softsign": nn.Softsign, "tanhshrink": nn.Tanhshrink, "logsigmoid": nn.LogSigmoid,
    "prelu": nn.PReLU,
}
NO_ACTIVATION = (None, "linear")


@dataclass(frozen=True)
class HypernetworkStructure:
    """The shape of every MLP of one file (A1111's keys, already validated)."""

    layer_structure: tuple[float, ...] = (1.0, 2.0, 1.0)
    activation: str | None = None
    layer_norm: bool = False
    activate_output: bool = True
    dropout_structure: tuple[float, ...] = (0.0, 0.0, 0.0)

    def widths(self, dim: int) -> list[int]:
        """Feature widths along the MLP for tokens of width `dim` (A1111 truncates with int)."""
        return [int(dim * factor) for factor in self.layer_structure]


class HypernetworkModule(nn.Module):
    """One residual MLP for one token width: x + linear(x) * multiplier."""

    def __init__(self, *, dim: int, structure: HypernetworkStructure) -> None:
        """:param dim: token width it applies to; :param structure: the file's MLP layout."""
        super().__init__()
        widths = structure.widths(dim)
        last = len(widths) - 2
        layers: list[nn.Module] = []
        for i in range(len(widths) - 1):
            layers.append(nn.Linear(widths[i], widths[i + 1]))
            # The activation follows every Linear but the last, unless activate_output.
            activated = i < last or structure.activate_output
            if structure.activation not in NO_ACTIVATION and activated:
                layers.append(ACTIVATIONS[structure.activation]())
            if structure.layer_norm:
                layers.append(nn.LayerNorm(widths[i + 1]))
            # Dropout slot: inactive at inference, it only holds its index.
            if structure.dropout_structure[i + 1] > 0:
                layers.append(nn.Identity())
        self.linear = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, *, multiplier: float) -> torch.Tensor:
        """Computed in the module's dtype (float32), returned in the dtype of `x`."""
        dtype = self.linear[0].weight.dtype
        source = x.to(dtype)
        return (source + self.linear(source) * multiplier).to(x.dtype)


class Hypernetwork(nn.Module):
    """A file's MLP pairs by token width: `layers["768"]` is (k module, v module)."""

    def __init__(self, *, name: str, dims: Sequence[int], structure: HypernetworkStructure) -> None:
        """:param name: as named in prompts; :param dims: token widths the file has MLPs for."""
        super().__init__()
        self.name = name
        self.structure = structure
        self.info: dict[str, object] = {}  # the file's name, step, sd_checkpoint, ... (as stored)
        self.layers = nn.ModuleDict({
            str(dim): nn.ModuleList([HypernetworkModule(dim=dim, structure=structure),
                                     HypernetworkModule(dim=dim, structure=structure)])
            for dim in dims
        })

    @property
    def dims(self) -> list[int]:
        return sorted(int(dim) for dim in self.layers)

    def pair(self, dim: int) -> nn.ModuleList | None:
        """(k module, v module) for tokens of width `dim`, or None."""
        return self.layers[str(dim)] if str(dim) in self.layers else None


@dataclass(frozen=True)
class HypernetworkStack:
    """One job's hypernetworks in prompt order, each with its multiplier: a `ContextTransform`."""

    entries: tuple[tuple[Hypernetwork, float], ...]

    def __call__(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key_source = value_source = source
        for network, multiplier in self.entries:
            pair = network.pair(key_source.shape[-1])
            if pair is None:
                continue
            key_source = pair[0](key_source, multiplier=multiplier)
            value_source = pair[1](value_source, multiplier=multiplier)
        return key_source, value_source
