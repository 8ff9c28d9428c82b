"""Linear and convolution layers whose weights stay in a low-bit storage format.

A Flux transformer has 12 billion weights: 24 GB in bfloat16, 12 GB in float8, about
7 GB in GGUF Q4_K. Keeping the weights in their stored form and expanding one layer's
matrix to the compute dtype only while that layer runs makes memory follow the file
size, at the price of one dequantization per layer call (a small cost next to the
matmul over thousands of tokens). Forge calls this "Diffusion in Low Bits".

Storage formats (`LowBitLinear.storage`):
- "float8_e4m3fn", "float8_e5m2": one byte a weight (PyTorch's float8 dtypes; files store
  them as safetensors `F8_E4M3` / `F8_E5M2`); upcast with a plain cast.
- GGML block quantizations ("Q8_0", "Q4_K", ...; see `modules.nn.gguf_quants`), from
  `.gguf` files, dequantized with torch.

The stored bytes live in a uint8 buffer `stored_weight`, so that `module.to(dtype)` (which
converts every floating tensor) never touches them; it changes `compute_dtype` instead.
`weight` is a property: the compute-dtype matrix, built on each access. Code that reads
`layer.weight` (the fused q/k/v projection, a model's `dtype`, LoRA merging) therefore
works unchanged, and the inherited `forward` of `nn.Linear` / `nn.Conv2d` is the one
that runs. A per-call replacement through `torch.func.functional_call` (LoRA patches,
`modules.models.patcher`) lands in `_parameters["weight"]`, which is `None` otherwise,
and takes precedence while it is there. In a state dict the weight keeps its usual name:
float8 weights as float8 tensors, GGUF ones dequantized.

`to_low_bit` swaps a model's dense layers for these (converting their weights);
`prepare_low_bit` does it on a model built on the meta device, for the layers whose
weights a loaded state dict holds in a low-bit form, before `load_state_dict(assign=True)`.
This is construction with our own layer types, not patching: nothing global changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from gguf import GGMLQuantizationType
from torch import nn

from modules.nn.gguf_quants import QuantizedTensor, dequantize

FLOAT8_FORMATS: dict[str, torch.dtype] = {
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
StoredWeight = torch.Tensor | QuantizedTensor


def is_low_bit(value: object) -> bool:
    """A GGUF-quantized tensor or a float8 tensor: a weight a low-bit layer keeps as is."""
    if isinstance(value, QuantizedTensor):
        return True
    return isinstance(value, torch.Tensor) and value.dtype in FLOAT8_FORMATS.values()


def weight_dtype(layer: nn.Module) -> torch.dtype:
    """The dtype `layer` computes in, read without dequantizing a low-bit weight."""
    if isinstance(layer, LowBitWeight):
        return layer.compute_dtype
    return layer.weight.dtype


class LowBitWeight:
    """The weight storage shared by `LowBitLinear` and `LowBitConv2d` (a mixin)."""

    storage: str
    compute_dtype: torch.dtype
    _parameters: dict[str, Any]
    _buffers: dict[str, Any]

    @property
    def weight(self) -> torch.Tensor:
        override = self._parameters.get("weight")
        if override is not None:  # a per-call replacement (functional_call)
            return override
        return self.dequantized_weight()

    @property
    def weight_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The stored weight as a dense `dtype` (default: compute dtype) tensor."""
        dtype = dtype or self.compute_dtype
        stored = self._buffers["stored_weight"]
        if self.storage in FLOAT8_FORMATS:
            return stored.view(FLOAT8_FORMATS[self.storage]).view(self.weight_shape).to(dtype)
        return dequantize(stored, GGMLQuantizationType[self.storage], self.weight_shape, dtype)

    def stored_form(self) -> StoredWeight:
        """The weight as stored: a float8 tensor or a `QuantizedTensor`."""
        stored = self._buffers["stored_weight"]
        if self.storage in FLOAT8_FORMATS:
            return stored.view(FLOAT8_FORMATS[self.storage]).view(self.weight_shape)
        return QuantizedTensor(stored, GGMLQuantizationType[self.storage], self.weight_shape)

    def store(self, value: StoredWeight) -> None:
        """Keep `value` (float8, GGUF-quantized, or dense: cast to this layer's float8)."""
        if isinstance(value, QuantizedTensor):
            if value.numel != _numel(self.weight_shape):
                raise ValueError(f"{value.qtype.name} tensor {list(value.shape)} does not fit "
                                 f"a weight {list(self.weight_shape)}")
            self.storage, data = value.qtype.name, value.data
        elif value.dtype in FLOAT8_FORMATS.values():
            self.storage = str(value.dtype).removeprefix("torch.")
            data = value.reshape(self.weight_shape).view(torch.uint8)
        elif self.storage in FLOAT8_FORMATS:
            data = value.reshape(self.weight_shape).to(FLOAT8_FORMATS[self.storage])
            data = data.view(torch.uint8)
        else:
            raise ValueError(f"a dense weight cannot be stored as {self.storage} here")
        self.register_buffer("stored_weight", data, persistent=False)  # type: ignore[attr-defined]

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # `.to(dtype)` / `.half()` change the dtype computed in; the stored bytes are uint8.
        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        return super()._apply(fn, recurse)  # type: ignore[misc]

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # noqa: ANN001
        super()._save_to_state_dict(destination, prefix, keep_vars)  # type: ignore[misc]
        stored = self.stored_form()
        destination[prefix + "weight"] = (stored.dequantize(self.compute_dtype)
                                          if isinstance(stored, QuantizedTensor) else stored)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,  # noqa: ANN001
                              missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
            error_msgs)
        key = prefix + "weight"
        if key in unexpected_keys:  # the default loader does not know the stored weight
            unexpected_keys.remove(key)
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        try:
            self.store(state_dict[key])
        except (ValueError, RuntimeError) as error:
            error_msgs.append(f"{key}: {error}")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, storage={self.storage}"  # type: ignore[misc]


class LowBitLinear(LowBitWeight, nn.Linear):
    """`nn.Linear` with its weight in a low-bit storage format."""

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features)


class LowBitConv2d(LowBitWeight, nn.Conv2d):
    """`nn.Conv2d` with its weight in a low-bit storage format."""

    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)


# The attributes that configure each layer type (everything but its tensors).
_CONFIG = {
    nn.Linear: ("in_features", "out_features"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "transposed", "output_padding", "groups", "padding_mode",
                "_reversed_padding_repeated_twice"),
}
_LOW_BIT = {nn.Linear: LowBitLinear, nn.Conv2d: LowBitConv2d}


def low_bit_twin(layer: nn.Linear | nn.Conv2d, stored: StoredWeight, *,
                 compute_dtype: torch.dtype) -> LowBitLinear | LowBitConv2d:
    """A low-bit layer configured as `layer`, sharing its bias, keeping `stored`."""
    base = type(layer)
    twin = _LOW_BIT[base].__new__(_LOW_BIT[base])
    nn.Module.__init__(twin)
    for name in _CONFIG[base]:
        setattr(twin, name, getattr(layer, name))
    twin._parameters["weight"] = None
    twin._parameters["bias"] = layer.bias
    twin.compute_dtype = compute_dtype
    twin.storage = "float8_e4m3fn"  # replaced by `store` when `stored` says otherwise
    twin.store(stored)
    twin.train(layer.training)
    return twin


def _layers(model: nn.Module) -> list[tuple[str, nn.Linear | nn.Conv2d]]:
    return [(name, module) for name, module in model.named_modules()
            if type(module) in _LOW_BIT]


def _swap(model: nn.Module, name: str, twin: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, twin)


def to_low_bit(model: nn.Module, storage: str, *,
               compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Swap every dense `nn.Linear` / `nn.Conv2d` of `model` for one storing `storage`.

    `storage`: "float8_e4m3fn" or "float8_e5m2". The weights are converted and the dense
    ones dropped, layer by layer; biases and every other tensor stay as they are. The
    compute dtype is each layer's weight dtype unless given. Returns `model` (changed in
    place).
    """
    if storage not in FLOAT8_FORMATS:
        raise ValueError(f"unknown low-bit storage {storage!r}; one of {list(FLOAT8_FORMATS)}")
    for name, layer in _layers(model):
        weight = layer.weight.detach()
        dtype = compute_dtype or weight.dtype
        _swap(model, name, low_bit_twin(layer, weight.to(FLOAT8_FORMATS[storage]),
                                        compute_dtype=dtype))
    return model


def prepare_low_bit(model: nn.Module, state: Mapping[str, object], *,
                    compute_dtype: torch.dtype, prefix: str = "") -> list[str]:
    """Swap in low-bit layers where `state[prefix + name + ".weight"]` is low-bit.

    For a model built on the meta device: afterwards `model.load_state_dict(state,
    assign=True)` fills the rest (biases, norms) without copying. Returns the layer names.
    """
    swapped = []
    for name, layer in _layers(model):
        value = state.get(prefix + name + ".weight")
        if is_low_bit(value):
            _swap(model, name, low_bit_twin(layer, value, compute_dtype=compute_dtype))
            swapped.append(name)
    return swapped


def storage_bytes(model: nn.Module) -> int:
    """Bytes held by `model`'s parameters and buffers (`numel * element_size`)."""
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
