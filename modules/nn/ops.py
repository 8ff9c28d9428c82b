"""Small tensor helpers that save memory traffic at inference and change no result.

A U-Net step on a CPU spends a sizeable share of its time allocating and writing
intermediate maps (GroupNorm output, SiLU output, residual sums). When autograd is off
(sampling runs under `torch.inference_mode`), an activation or a residual add can write
into a tensor the caller has just made and owns; with autograd on (training the demo
model), the out-of-place form is kept, because autograd may need the overwritten values.
Results are bitwise the same either way: the same operation, only the destination differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def may_write_in_place() -> bool:
    """True when no graph is being recorded, so fresh intermediates may be overwritten."""
    return not torch.is_grad_enabled()


def silu_fresh(x: torch.Tensor) -> torch.Tensor:
    """SiLU of a tensor the caller just computed (and nobody else holds)."""
    return F.silu(x, inplace=may_write_in_place())


def add_fresh(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`fresh + other`, written into `fresh` when allowed (`fresh` must be the caller's own)."""
    if may_write_in_place() and fresh.shape == torch.broadcast_shapes(fresh.shape, other.shape):
        return fresh.add_(other)
    return fresh + other


def norm_silu_conv(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run a GroupNorm-SiLU-(Identity)-conv `nn.Sequential` with the SiLU in place.

    The containers keep their CompVis indices (`in_layers.0`, `in_layers.2`, ...) so that
    checkpoint keys load by name; only the way they are called differs.
    """
    norm, conv = layers[0], layers[-1]
    return conv(silu_fresh(norm(x)))


def mul_fresh(fresh: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """`fresh * other`, written into `fresh` when allowed (`fresh` must be the caller's own)."""
    if may_write_in_place() and fresh.shape == torch.broadcast_shapes(fresh.shape, other.shape):
        return fresh.mul_(other)
    return fresh * other
