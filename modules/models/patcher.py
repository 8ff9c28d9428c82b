"""Per-request weight patches on a shared model, without ever writing to it.

A loaded model is shared by every job. A job that uses LoRAs gets a *clone* of the
model's `ModelPatcher`: the clone holds the job's patches as typed data
(`WeightPatch`), and hands out callables for the U-Net and text encoders that run the
shared modules with some parameters replaced, through
`torch.func.functional_call(module, {name: merged tensor}, args, kwargs)`. The base
tensors are never written, so after a job they are bitwise what they were.

Merged weights W' = W + sum_i m_i * dW_i are computed once per patch set and kept in a
small LRU shared by all clones of one model, keyed by the set's identity (file
stamps, multipliers, dyn), so switching back to a recent LoRA set costs nothing. Why
merging rather than adding x @ down @ up at forward time: see docs/architecture.md,
"LoRA: merged copies vs forward-time".

functional_call swaps parameter references on the module for the length of one call
(and swaps them back); all calls made through patchers of one model therefore take
one lock, so a patched call and a plain one can never overlap.

A clone may also carry a `context_transform` (hypernetworks): the U-Net callable it
hands out passes it to `UNetModel.forward(context_transform=...)` on every call, the
documented hook point of `modules.nn.transformer`; no module is changed for it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from modules.devices import execution_device
from modules.networks.adapters import AdapterError, apply_dora, updates_for


@dataclass(frozen=True, eq=False)
class WeightPatch:
    """One adapter on one layer at one strength.

    component: "unet" or a text encoder name; path: the module inside it.
    tensors: the adapter's tensors in kohya's spelling (`lora_down.weight`, `alpha`,
    `hada_w1_a`, `diff`, ...). source / name: file and module name, for messages.
    rows: the output rows of the layer the adapter updates (None: all): a diffusers /
    PEFT `to_q` LoRA on a fused `qkv` or Flux `linear1` updates the q rows only.
    swap_halves: the adapter was trained on a layout whose two halves of output rows
    come in the other order (diffusers' (scale, shift) adaLN for our (shift, scale)).
    """

    component: str
    path: str
    tensors: Mapping[str, Tensor]
    strength: float
    dyn: int | None = None
    source: str = ""
    name: str = ""
    rows: slice | None = None
    swap_halves: bool = False


@dataclass
class MergedWeights:
    """Replacement parameters per component, and the patches that could not be applied."""

    params: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    skipped: list[tuple[WeightPatch, str]] = field(default_factory=list)


def merge_patches(model: nn.Module, components: Mapping[str, nn.Module],
                  patches: tuple[WeightPatch, ...]) -> MergedWeights:
    """W + sum_i m_i dW_i for every patched layer (each dW against the original W)."""
    by_layer: dict[tuple[str, str], list[WeightPatch]] = {}
    for patch in patches:
        by_layer.setdefault((patch.component, patch.path), []).append(patch)
    merged = MergedWeights()
    for (component, path), group in by_layer.items():
        module = components[component].get_submodule(path)
        weight, bias = _merge_layer(module, group, merged.skipped)
        # Where the component computes, also when --medvram / --lowvram rests it in RAM.
        device = execution_device(components[component])
        for name, tensor in ((".weight", weight), (".bias", bias)):
            if tensor is not None:
                merged.params.setdefault(component, {})[path + name] = tensor.to(device)
    return merged


def _merge_layer(module: nn.Module, patches: list[WeightPatch],
                 skipped: list[tuple[WeightPatch, str]]) -> tuple[Tensor | None, Tensor | None]:
    weight = module.weight.detach()
    bias = getattr(module, "bias", None)
    weight_delta, bias_delta = None, None
    with torch.no_grad():
        for patch in patches:
            try:
                delta, bias_step = _patch_delta(patch, weight, bias)
            except (AdapterError, KeyError, RuntimeError) as error:
                skipped.append((patch, str(error)))
                continue
            weight_delta = _accumulate(weight_delta, delta * patch.strength, weight, patch.rows)
            if bias_step is not None:
                bias_delta = _accumulate(bias_delta, bias_step * patch.strength, bias, patch.rows)
        new_weight = (None if weight_delta is None
                      else (weight.float() + weight_delta).to(weight.dtype))
        new_bias = (None if bias_delta is None
                    else (bias.detach().float() + bias_delta).to(bias.dtype))
    return new_weight, new_bias


def _swap_halves(tensor: Tensor) -> Tensor:
    """(a, b) -> (b, a) along the output axis."""
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _patch_delta(patch: WeightPatch, weight: Tensor,
                 bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(dW, db) of one patch at strength 1 for its rows; db None when there is none."""
    part = weight if patch.rows is None else weight[patch.rows]
    # Adapters that read W (DoRA, (IA)^3) see it in the layout they were trained on.
    reference = _swap_halves(part) if patch.swap_halves else part
    update = updates_for(patch.tensors, reference, dyn=patch.dyn)
    delta, bias_delta = update.weight, update.bias
    if update.dora_scale is not None:
        delta = apply_dora(reference, delta, update.dora_scale)
    bias_part = bias if bias is None or patch.rows is None else bias[patch.rows]
    if bias_delta is not None and (bias_part is None or bias_delta.numel() != bias_part.numel()):
        bias_delta = None
    if bias_delta is not None:
        bias_delta = bias_delta.reshape(bias_part.shape)
    if patch.swap_halves:
        delta = _swap_halves(delta)
        bias_delta = None if bias_delta is None else _swap_halves(bias_delta)
    return delta, bias_delta


def _accumulate(total: Tensor | None, step: Tensor, like: Tensor, rows: slice | None) -> Tensor:
    """`total` + `step`, where `step` covers `rows` of a tensor shaped like `like`."""
    if rows is None:
        return step if total is None else step + total
    if total is None:
        total = torch.zeros(like.shape, dtype=step.dtype, device=step.device)
    total[rows] += step
    return total


class PatchedCall:
    """Calls `module` with some parameters replaced (none: a plain call), under a lock.

    `call_kwargs` are keyword arguments added to every call (the U-Net's `context_transform`).
    `accelerator` (the U-Net's `--cpu-backend openvino`, `modules.models.openvino_unet`)
    takes the calls it can run, with the same replaced parameters.
    """

    def __init__(self, module: nn.Module, params: Mapping[str, Tensor], lock: threading.RLock,
                 call_kwargs: Mapping[str, Any] | None = None, *, accelerator: Any = None):
        self.module = module
        self.params = dict(params)
        self.lock = lock
        self.call_kwargs = dict(call_kwargs or {})
        self.accelerator = accelerator

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = {**self.call_kwargs, **kwargs}
        with self.lock:
            if self.accelerator is not None and self.accelerator.eager_reason(kwargs) is None:
                for name in ("patches", "token_merging", "context_transform"):
                    kwargs.pop(name, None)  # none of them changes this call (eager_reason)
                return self.accelerator(self.params, *args, **kwargs)
            if not self.params:
                return self.module(*args, **kwargs)
            return functional_call(self.module, self.params, args, kwargs, strict=False)


class PatchedTextEncoder(PatchedCall):
    """A `TextEncoder` stand-in for the conditioner: patched forward, shared embeddings."""

    @property
    def config(self):
        return self.module.config

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.module.token_embedding

    @property
    def num_layers(self) -> int:
        return self.module.num_layers

    def parameters(self):
        """The base encoder's parameters: `devices.execution_device` reads their device."""
        return self.module.parameters()


class _Shared:
    """State all clones of one model's patcher share: the lock, the LRU, memos."""

    def __init__(self, cache_size: int) -> None:
        self.lock = threading.RLock()
        self.cache_size = cache_size
        self.merged: OrderedDict[Hashable, MergedWeights] = OrderedDict()
        self.memos: dict[str, Any] = {}
        self.memo_lock = threading.Lock()
        self.accelerator: Any = None


class ModelPatcher:
    """A model plus one request's patches; `clone()` before adding any."""

    def __init__(self, *, model: nn.Module, cache_size: int = 2, accelerator: Any = None) -> None:
        """:param model: a `StableDiffusionModel`; :param cache_size: merged sets kept;
        :param accelerator: runs the U-Net calls it can (`PatchedCall`), None: eager only"""
        self.model = model
        self.patches: tuple[WeightPatch, ...] = ()
        self.key: tuple = ()
        # Hypernetworks: a `modules.nn.transformer.ContextTransform` for the U-Net calls.
        self.context_transform: Callable | None = None
        self._shared = _Shared(cache_size)
        self._shared.accelerator = accelerator

    def clone(self) -> "ModelPatcher":
        other = object.__new__(ModelPatcher)
        other.model, other.patches, other.key = self.model, self.patches, self.key
        other.context_transform = self.context_transform
        other._shared = self._shared
        return other

    def with_context_transform(self, transform: Callable | None) -> "ModelPatcher":
        """A clone whose U-Net calls pass `context_transform=transform` (None: no transform)."""
        other = self.clone()
        other.context_transform = transform
        return other

    def with_patches(self, patches: tuple[WeightPatch, ...], key: Hashable) -> "ModelPatcher":
        """A clone with `patches` added; `key` identifies them for the merged-weight cache."""
        other = self.clone()
        other.patches = self.patches + tuple(patches)
        other.key = self.key + ((key,) if patches else ())
        return other

    def components(self) -> dict[str, nn.Module]:
        return {"unet": self.model.unet, **dict(self.model.text_encoders.items())}

    def merged(self) -> MergedWeights:
        """This clone's merged weights, from the shared LRU when this set was seen before."""
        if not self.patches:
            return MergedWeights()
        shared = self._shared
        with shared.lock:
            if self.key in shared.merged:
                shared.merged.move_to_end(self.key)
                return shared.merged[self.key]
            result = merge_patches(self.model, self.components(), self.patches)
            shared.merged[self.key] = result
            while len(shared.merged) > max(shared.cache_size, 1):
                shared.merged.popitem(last=False)
            return result

    def unet(self) -> PatchedCall:
        transform = self.context_transform
        extra = {} if transform is None else {"context_transform": transform}
        return PatchedCall(self.model.unet, self.merged().params.get("unet", {}), self._shared.lock,
                           extra, accelerator=self._shared.accelerator)

    def text_encoder(self, name: str) -> PatchedTextEncoder:
        return PatchedTextEncoder(self.model.text_encoders[name],
                                  self.merged().params.get(name, {}), self._shared.lock)

    def patches_text_encoders(self) -> bool:
        return any(name != "unet" for name in self.merged().params)

    def memo(self, name: str, build: Callable[[], Any]) -> Any:
        """A value derived from the model alone (e.g. its LoRA name map), built once."""
        shared = self._shared
        with shared.memo_lock:
            if name not in shared.memos:
                shared.memos[name] = build()
            return shared.memos[name]
