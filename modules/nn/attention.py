"""Scaled dot-product attention kernels and the per-model choice between them.

Attention (Vaswani et al., 2017, "Attention Is All You Need") is
softmax(Q K^T / sqrt(d)) V. Every attention layer of the U-Net and the VAE calls
`attention(q, k, v, backend=...)` with tensors shaped (batch, heads, tokens, head_dim);
which kernel runs is decided by the `AttentionBackend` stored on the layer instance:

* `sdpa`: `torch.nn.functional.scaled_dot_product_attention`, which picks flash /
  memory-efficient / math kernels itself. The default.
* `xformers`: `xformers.ops.memory_efficient_attention` (Rabe & Staats, 2021,
  "Self-attention Does Not Need O(n^2) Memory"). It only has CUDA kernels, so it runs
  only for CUDA tensors; other tensors go through SDPA.
* `sliced`: queries processed in chunks so that the (queries x keys) score matrix never
  exceeds a byte budget; plain matmul + softmax, for devices where SDPA's fused kernels
  are missing and the math kernel would run out of memory.

The backend is per model (`unet.set_attention_backend("sliced")`), never a global:
two models in one process may use different kernels. xformers is imported lazily, inside
functions, so importing this module has no side effects.
"""

from __future__ import annotations

import importlib.util
from enum import Enum
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

# Score-matrix budget of one query chunk of the sliced kernel (bytes).
DEFAULT_SLICE_BYTES = 256 * 1024 * 1024
# With a `cancel`, an attention over more scores (batch x heads x queries x keys) than the
# first number runs in query chunks of about the second, with a check between them: on a
# CPU a chunk is well under a second of work, so a huge image stops inside one layer; on
# CUDA the numbers are 16 times larger (fewer, still short, kernel launches).
CANCEL_CHUNKING_SCORES, CANCEL_CHUNK_SCORES = 2**28, 2**26
CUDA_SCALE = 16


class Cancel(Protocol):
    """Anything whose `check()` raises to abandon a long computation (a job's stop request,
    `modules.jobs.Cancellation`); `modules/nn` only calls it."""

    def check(self) -> None: ...


def check(cancel: Cancel | None) -> None:
    """Give a stop request its chance to end the computation here."""
    if cancel is not None:
        cancel.check()


class AttentionBackend(str, Enum):
    """The attention kernels a model can be told to use."""

    AUTO = "auto"
    SDPA = "sdpa"
    XFORMERS = "xformers"
    SLICED = "sliced"


def xformers_available() -> bool:
    """Whether the `xformers` package can be imported (checked without importing it)."""
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(name: str | AttentionBackend) -> AttentionBackend:
    """Turn a user's choice into a concrete backend.

    `auto` becomes `xformers` when it is installed (used on CUDA tensors only) and
    `sdpa` otherwise. Asking for `xformers` when it is not installed is an error.
    """
    try:
        backend = AttentionBackend(name)
    except ValueError:
        choices = ", ".join(b.value for b in AttentionBackend)
        raise ValueError(f"unknown attention backend {name!r}; choose one of: {choices}") from None
    # Resolve `auto` once, so per-call dispatch is a plain comparison.
    if backend is AttentionBackend.AUTO:
        return AttentionBackend.XFORMERS if xformers_available() else AttentionBackend.SDPA
    if backend is AttentionBackend.XFORMERS and not xformers_available():
        raise ValueError("attention backend 'xformers' was asked for but xformers is not installed")
    return backend


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v through PyTorch's fused kernels; (B, H, T, d) layout."""
    return F.scaled_dot_product_attention(q, k, v)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same attention through xformers, which wants (B, T, H, d) tensors."""
    import xformers.ops  # lazy: only when this kernel actually runs

    out = xformers.ops.memory_efficient_attention(
        q.transpose(1, 2).contiguous(),
        k.transpose(1, 2).contiguous(),
        v.transpose(1, 2).contiguous(),
    )
    return out.transpose(1, 2)


def sliced_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, slice_bytes: int = DEFAULT_SLICE_BYTES,
    cancel: Cancel | None = None,
) -> torch.Tensor:
    """Attention computed over chunks of queries to bound the score matrix's memory.

    Each chunk's scores are (B, H, chunk, T_k); the softmax runs in float32 so that
    half-precision scores cannot overflow, then drops back to the input dtype.
    """
    batch, heads, queries, head_dim = q.shape
    keys = k.shape[2]
    scale = head_dim**-0.5
    # Queries per chunk so that one float32 score block fits the budget.
    bytes_per_query = batch * heads * keys * 4
    chunk = max(1, min(queries, slice_bytes // max(1, bytes_per_query)))
    out = torch.empty(batch, heads, queries, v.shape[-1], dtype=q.dtype, device=q.device)
    for start in range(0, queries, chunk):
        check(cancel)
        end = min(queries, start + chunk)
        scores = torch.matmul(q[:, :, start:end], k.transpose(-1, -2)) * scale
        weights = scores.softmax(dim=-1, dtype=torch.float32).to(v.dtype)
        out[:, :, start:end] = torch.matmul(weights, v)
    return out


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    backend: AttentionBackend = AttentionBackend.SDPA,
    upcast: bool = False,
    cancel: Cancel | None = None,
) -> torch.Tensor:
    """Multi-head attention over (batch, heads, tokens, head_dim) with the chosen kernel.

    `backend` must be resolved (see `resolve_backend`); `xformers` is used only for
    CUDA tensors, anything else falls back to SDPA. `upcast` computes half-precision
    inputs in float32 and returns the input dtype (`--upcast-sampling`). With `cancel`,
    a large attention runs in query chunks with `cancel.check()` between them (each
    query's softmax is over all keys either way: the result is the same).
    """
    if upcast and q.dtype in (torch.float16, torch.bfloat16):
        out = attention(q.float(), k.float(), v.float(), backend=backend, cancel=cancel)
        return out.to(q.dtype)
    if backend is AttentionBackend.SLICED:
        return sliced_attention(q, k, v, cancel=cancel)
    kernel = (xformers_attention if backend is AttentionBackend.XFORMERS and q.is_cuda
              else sdpa_attention)
    batch, heads, queries, _ = q.shape
    per_query = batch * heads * k.shape[2]
    scale = CUDA_SCALE if q.is_cuda else 1
    if cancel is None or per_query * queries <= CANCEL_CHUNKING_SCORES * scale:
        return kernel(q, k, v)
    chunk = max(1, CANCEL_CHUNK_SCORES * scale // per_query)
    return chunked_attention(kernel, q, k, v, chunk=chunk, cancel=cancel)


def chunked_attention(kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, chunk: int,
                      cancel: Cancel | None) -> torch.Tensor:
    """`kernel(q, k, v)` over `chunk` queries at a time, `cancel.check()` before each."""
    parts = []
    for start in range(0, q.shape[2], chunk):
        check(cancel)
        parts.append(kernel(q[:, :, start:start + chunk], k, v))
    return torch.cat(parts, dim=2)


class AttentionLayer(nn.Module):
    """Base of every module that calls `attention`: it carries its own backend choice."""

    def __init__(self) -> None:
        super().__init__()
        self.attention_backend = AttentionBackend.SDPA
        self.attention_upcast = False  # float32 attention over half weights


def set_attention_backend(model: nn.Module, name: str | AttentionBackend) -> AttentionBackend:
    """Set the attention kernel of every `AttentionLayer` inside `model`; returns it resolved."""
    backend = resolve_backend(name)
    for module in model.modules():
        if isinstance(module, AttentionLayer):
            module.attention_backend = backend
    return backend


def set_attention_upcast(model: nn.Module, enabled: bool) -> None:
    """Compute every `AttentionLayer` of `model` in float32 (half-precision models only)."""
    for module in model.modules():
        if isinstance(module, AttentionLayer):
            module.attention_upcast = enabled
