"""The weight updates of LoRA-family adapters, as plain functions of their factors.

Each adapter turns the tensors stored for one layer into dW (and maybe db), which is
added to the layer's weight as W' = W + strength * scale * dW (docs/model-formats.md, "LoRA files"):

* LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685): dW = up @ down, conv
  factors flattened to 2-D and reshaped back; LoCon's Tucker form (`lora_mid`) is
  dW[i,j,k,l] = sum_{n,m} mid[n,m,k,l] up[i,n] down[m,j]. scale = alpha / rank
  (1 when there is no alpha). `dyn` keeps only the first `dyn` ranks.
* LoHa (LyCORIS, Yeh et al., 2023, https://arxiv.org/abs/2309.14859): the Hadamard
  product of two low-rank products, (w1_a @ w1_b) * (w2_a @ w2_b), optionally with
  Tucker cores `hada_t1` / `hada_t2`.
* LoKr (same paper): dW = kron(W1, W2), each factor full or low-rank (or Tucker for
  W2); scale = alpha / rank of the low-rank factor, 1 when both are full.
* (IA)^3 (Liu et al., 2022, https://arxiv.org/abs/2205.05638): a learned vector
  rescales the rows (or, `on_input`, the columns): dW = W * w.
* Full / diff: dW is stored as is (`diff`, `diff_b`); norm layers: `w_norm`, `b_norm`.
* DoRA (Liu et al., 2024, https://arxiv.org/abs/2402.09353): after W + scale * dW the
  weight is renormalised to the learned magnitude `dora_scale`; see `apply_dora`.

Everything is computed in float32 on the weight's device and cast back at the end.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor


class AdapterError(ValueError):
    """Tensors of one layer that do not fit together or do not fit the layer."""


@dataclass(frozen=True, kw_only=True)
class Update:
    """What one adapter adds to a layer before the strength: weight and bias deltas."""

    weight: Tensor | None
    bias: Tensor | None = None
    dora_scale: Tensor | None = None


def _f(tensor: Tensor, device) -> Tensor:
    return tensor.to(device=device, dtype=torch.float32)


def _fit(delta: Tensor, shape: tuple[int, ...], what: str) -> Tensor:
    """`delta` reshaped to the weight's shape (a 1x1 conv and a Linear share numbers)."""
    if delta.numel() != torch.Size(shape).numel():
        raise AdapterError(f"{what} gives {tuple(delta.shape)}, the layer's weight is {shape}")
    return delta.reshape(shape)


def _scale(group: Mapping[str, Tensor], rank: int | None) -> float:
    if "scale" in group:
        return float(group["scale"])
    alpha = group.get("alpha")
    if alpha is None or rank is None or float(alpha) == 0:
        return 1.0
    return float(alpha) / rank


def lora_delta(group: Mapping[str, Tensor], shape: tuple[int, ...], device,
               dyn: int | None = None) -> Tensor:
    """LoRA / LoCon: up @ down (with the Tucker mid core when present), times alpha/rank."""
    down, up = _f(group["lora_down.weight"], device), _f(group["lora_up.weight"], device)
    rank = down.shape[0]
    mid = group.get("lora_mid.weight")
    if dyn is not None and 0 < dyn < rank:
        down, up = down[:dyn], up[:, :dyn]
        mid = None if mid is None else mid[:dyn, :dyn]
    if up.shape[1] != down.shape[0]:
        raise AdapterError(f"lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)} "
                           "disagree on the rank")
    if mid is not None:
        core = _f(mid, device)
        delta = torch.einsum("nmkl,in,mj->ijkl", core, up.flatten(1), down.flatten(1))
    else:
        delta = up.flatten(1) @ down.flatten(1)
    return _fit(delta, shape, "lora_up @ lora_down") * _scale(group, rank)


def _tucker(core: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """W[i,j,k,l] = sum_{p,q} core[p,q,k,l] a[p,i] b[q,j]."""
    return torch.einsum("pqkl,pi,qj->ijkl", core, a, b)


def loha_delta(group: Mapping[str, Tensor], shape: tuple[int, ...], device) -> Tensor:
    """LoHa: (w1_a @ w1_b) * (w2_a @ w2_b), or with Tucker cores t1 / t2."""
    w = {k: _f(v, device) for k, v in group.items() if k.startswith("hada_")}
    if "hada_t1" in w and "hada_t2" in w:
        w1 = _tucker(w["hada_t1"], w["hada_w1_a"], w["hada_w1_b"])
        w2 = _tucker(w["hada_t2"], w["hada_w2_a"], w["hada_w2_b"])
    else:
        w1 = w["hada_w1_a"] @ w["hada_w1_b"]
        w2 = w["hada_w2_a"] @ w["hada_w2_b"]
    if w1.shape != w2.shape:
        raise AdapterError(f"LoHa halves differ: {tuple(w1.shape)} vs {tuple(w2.shape)}")
    rank = w["hada_w1_b"].shape[0]
    return _fit(w1 * w2, shape, "LoHa") * _scale(group, rank)


def _lokr_factor(w: Mapping[str, Tensor], n: str) -> tuple[Tensor, int | None]:
    """One Kronecker factor (full, low-rank or Tucker) and its rank (None when full)."""
    if f"lokr_w{n}" in w:
        return w[f"lokr_w{n}"], None
    a, b = w[f"lokr_w{n}_a"], w[f"lokr_w{n}_b"]
    if f"lokr_t{n}" in w:
        return _tucker(w[f"lokr_t{n}"], a, b), b.shape[0]
    return a @ b, b.shape[0]


def lokr_delta(group: Mapping[str, Tensor], shape: tuple[int, ...], device) -> Tensor:
    """LoKr: kron(W1, W2); W2 gets the kernel dims of a conv layer."""
    w = {k: _f(v, device) for k, v in group.items() if k.startswith("lokr_")}
    w1, rank1 = _lokr_factor(w, "1")
    w2, rank2 = _lokr_factor(w, "2")
    if len(shape) == 4:
        if w2.ndim == 2:  # low-rank W2 stored flat: [b, d*kh*kw] -> [b, d, kh, kw]
            w2 = w2.reshape(w2.shape[0], -1, *shape[2:])
        w1 = w1.reshape(*w1.shape[:2], *([1] * (w2.ndim - 2)))
    delta = torch.kron(w1, w2)
    rank = rank1 if rank1 is not None else rank2
    return _fit(delta, shape, "LoKr kron(w1, w2)") * _scale(group, rank)


def ia3_delta(group: Mapping[str, Tensor], weight: Tensor) -> Tensor:
    """(IA)^3: W * w per output row, or per input column when `on_input` is set."""
    w = _f(group["weight"], weight.device)
    on_input = bool(group["on_input"]) if "on_input" in group else False
    axis = 1 if on_input else 0
    if w.numel() != weight.shape[axis]:
        raise AdapterError(f"(IA)^3 vector of {w.numel()} for a weight {tuple(weight.shape)}")
    view = [1] * weight.ndim
    view[axis] = -1
    return weight.float() * w.reshape(view)


def full_delta(group: Mapping[str, Tensor], shape: tuple[int, ...], device) -> Tensor:
    return _fit(_f(group["diff"], device), shape, "diff")


def updates_for(group: Mapping[str, Tensor], weight: Tensor, *, dyn: int | None = None) -> Update:
    """The update one layer's tensors describe; raises `AdapterError` when they don't fit."""
    shape, device = tuple(weight.shape), weight.device
    bias = None
    if "lora_down.weight" in group and "lora_up.weight" in group:
        delta = lora_delta(group, shape, device, dyn)
    elif "hada_w1_a" in group:
        delta = loha_delta(group, shape, device)
    elif any(key.startswith("lokr_") for key in group):
        delta = lokr_delta(group, shape, device)
    elif "diff" in group:
        delta, bias = full_delta(group, shape, device), group.get("diff_b")
    elif "w_norm" in group:
        delta, bias = _fit(_f(group["w_norm"], device), shape, "w_norm"), group.get("b_norm")
    elif "weight" in group:
        delta = ia3_delta(group, weight)
    else:
        raise AdapterError("unsupported module type (keys: " + ", ".join(sorted(group)) + ")")
    dora = group.get("dora_scale", group.get("lora_magnitude_vector"))
    return Update(weight=delta, bias=None if bias is None else _f(bias, device),
                  dora_scale=None if dora is None else _f(dora, device))


def apply_dora(weight: Tensor, delta: Tensor, magnitude: Tensor) -> Tensor:
    """DoRA: the merged weight renormalised to `magnitude`; returns the new delta.

    LyCORIS / kohya store the magnitude per input column ([1, in(, 1, 1)]), the norm then
    taken over the output dimension; PEFT stores it per output row ([out]). W'' =
    (W + dW) * magnitude / ||W + dW||, and the delta is W'' - W.
    """
    merged = weight.float() + delta
    if magnitude.ndim == 1 or magnitude.shape[0] != 1:  # per output row
        norm = merged.flatten(1).norm(dim=1).reshape(-1, *([1] * (merged.ndim - 1)))
        magnitude = magnitude.reshape(norm.shape)
    else:
        columns = merged.transpose(0, 1).flatten(1)
        norm = columns.norm(dim=1).reshape(1, -1, *([1] * (merged.ndim - 2)))
        magnitude = magnitude.reshape(norm.shape)
    return merged * (magnitude / norm) - weight.float()
