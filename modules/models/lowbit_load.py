"""Loading a diffusion model (U-Net, MMDiT, Flux) with its weights in low bits.

Forge's option `forge_unet_storage_dtype` ("Diffusion in Low Bits") chooses how the
diffusion model's layer weights are kept in memory:
- "Automatic": as the file stores them: float8 weights (safetensors `F8_E4M3`,
  `F8_E5M2`) stay float8, GGUF quantizations stay quantized, 16/32-bit ones are cast to
  the compute dtype as usual.
- "float8-e4m3fn" / "float8-e5m2": the weights of every `nn.Linear` / `nn.Conv2d` are
  converted to that float8 format as they are read (a GGUF file keeps its own
  quantization).
The "(fp16 LoRA)" variants store the same way: in Easel a LoRA is always merged into a
compute-dtype copy for the request (`modules.models.patcher`), never baked into the
low-bit weights, which is what those variants ask Forge for. Forge's bnb-nf4 / bnb-fp4
are not offered (no bitsandbytes).

Everything else (norms, biases, embeddings, the text encoders and the VAE) is loaded in
the compute dtype. Tensors are read one at a time and converted as they arrive, so
loading a float8 or GGUF file peaks near the file size (bench/bench_lowbit_load.py).

`load_diffusion_weights` is the call for a model built on the meta device;
`apply_storage_label` converts an already loaded dense model (the peak is then the dense
model's size). The infotext key is `Diffusion in Low Bits`, written when the option is
not "Automatic" (`low_bits_infotext`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from modules.models.errors import ModelLoadError
from modules.models.gguf_io import is_gguf, iter_gguf, read_gguf_header
from modules.models.safetensors_io import iter_safetensors, read_safetensors_header
from modules.models.single_file import SAFETENSORS_SUFFIXES
from modules.nn.gguf_quants import QuantizedTensor
from modules.nn.lowbit import FLOAT8_FORMATS, LowBitWeight, prepare_low_bit, to_low_bit

INFOTEXT_KEY = "Diffusion in Low Bits"
# Forge's labels -> storage format (None: as the file stores it).
STORAGE_LABELS: dict[str, str | None] = {
    "Automatic": None,
    "Automatic (fp16 LoRA)": None,
    "float8-e4m3fn": "float8_e4m3fn",
    "float8-e4m3fn (fp16 LoRA)": "float8_e4m3fn",
    "float8-e5m2": "float8_e5m2",
    "float8-e5m2 (fp16 LoRA)": "float8_e5m2",
}
STORAGE_CHOICES = tuple(STORAGE_LABELS)

LoadedTensor = torch.Tensor | QuantizedTensor


@dataclass(frozen=True)
class LowBitLoad:
    """What `load_diffusion_weights` did: keys missing / left over (without the prefix),
    and the layers now stored low-bit."""

    missing: list[str]
    unexpected: list[str]
    low_bit_layers: list[str]


def storage_for_label(label: str) -> str | None:
    """The storage format a `forge_unet_storage_dtype` label asks for (None: as stored)."""
    if label not in STORAGE_LABELS:
        raise ValueError(f"unknown Diffusion in Low Bits option {label!r}; "
                         f"one of {list(STORAGE_CHOICES)}")
    return STORAGE_LABELS[label]


def low_bits_infotext(label: str, diffusion_model: nn.Module | None = None) -> dict[str, str]:
    """`{"Diffusion in Low Bits": label}` unless the option is "Automatic", or the given
    diffusion model holds no low-bit layer (the option did not apply to it)."""
    unused = diffusion_model is not None and not low_bit_layers(diffusion_model)
    if label == "Automatic" or unused:
        return {}
    return {INFOTEXT_KEY: label}


def low_bit_layers(model: nn.Module) -> dict[str, str]:
    """Layer name -> storage format, for the layers of `model` kept low-bit."""
    return {name: module.storage for name, module in model.named_modules()
            if isinstance(module, LowBitWeight)}


def layer_weight_names(model: nn.Module, prefix: str = "") -> set[str]:
    """`prefix + name + ".weight"` of every `nn.Linear` / `nn.Conv2d` in `model`."""
    return {f"{prefix}{name}.weight" for name, module in model.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d)) and name}


def read_low_bit_state(path: str | os.PathLike[str], *, layer_weights: set[str],
                       storage: str | None, compute_dtype: torch.dtype, prefix: str = "",
                       device: str | torch.device = "cpu") -> dict[str, LoadedTensor]:
    """The file's tensors under `prefix` (names kept), each converted as it is read.

    `layer_weights` (names in the file) are kept low-bit: GGUF quantizations as they are,
    float8 as stored or converted to `storage`, dense ones converted when `storage` is
    given. Every other floating tensor becomes `compute_dtype`.
    """
    target = FLOAT8_FORMATS[storage] if storage else None
    out: dict[str, LoadedTensor] = {}
    for name, value in _tensors(os.fspath(path), prefix, device):
        if isinstance(value, QuantizedTensor):
            if name not in layer_weights:  # quantized, yet not a layer weight: expand it
                value = value.dequantize(compute_dtype)
            out[name] = value
        elif not value.is_floating_point():
            out[name] = value
        elif name in layer_weights and target is not None:
            out[name] = value.to(target)
        elif name in layer_weights and value.dtype in FLOAT8_FORMATS.values():
            out[name] = value
        else:
            out[name] = value.to(compute_dtype)
    return out


def _tensors(path: str, prefix: str,
             device: str | torch.device) -> Iterator[tuple[str, LoadedTensor]]:
    if is_gguf(path):
        header = read_gguf_header(path)
        names = [name for name in header.tensors if name.startswith(prefix)]
        yield from iter_gguf(path, keys=names, device=device, header=header)
        return
    if not path.lower().endswith(SAFETENSORS_SUFFIXES):
        raise ModelLoadError(path, "low-bit loading reads .safetensors and .gguf files")
    header = read_safetensors_header(path)
    keys = [name for name in header.tensors if name.startswith(prefix)]
    yield from iter_safetensors(path, keys=keys, device=device, header=header)


def load_diffusion_weights(model: nn.Module, path: str | os.PathLike[str], *,
                           storage_label: str = "Automatic", compute_dtype: torch.dtype,
                           prefix: str = "", device: str | torch.device = "cpu") -> LowBitLoad:
    """Fill `model` (built on the meta device) from the file's tensors under `prefix`.

    Layers whose weights arrive low-bit become `LowBitLinear` / `LowBitConv2d`; the
    rest is assigned as read. Returns missing / unexpected keys (without `prefix`).
    """
    state = read_low_bit_state(path, layer_weights=layer_weight_names(model, prefix),
                               storage=storage_for_label(storage_label),
                               compute_dtype=compute_dtype, prefix=prefix, device=device)
    return load_low_bit_state(model, state, compute_dtype=compute_dtype, prefix=prefix)


def load_low_bit_state(model: nn.Module, state: Mapping[str, LoadedTensor], *,
                       compute_dtype: torch.dtype,
                       prefix: str = "") -> LowBitLoad:
    """`prepare_low_bit` then `load_state_dict(assign=True, strict=False)` (names less
    `prefix`); the state's tensors become the model's, without copies."""
    local = {name[len(prefix):]: value for name, value in state.items()
             if name.startswith(prefix)}
    layers = prepare_low_bit(model, local, compute_dtype=compute_dtype)
    result = model.load_state_dict(local, strict=False, assign=True)
    return LowBitLoad(missing=list(result.missing_keys),
                      unexpected=list(result.unexpected_keys), low_bit_layers=layers)


def apply_storage_label(model: nn.Module, label: str, *,
                        compute_dtype: torch.dtype | None = None) -> nn.Module:
    """Convert a loaded dense diffusion model's layers as `label` asks (in place)."""
    storage = storage_for_label(label)
    return model if storage is None else to_low_bit(model, storage, compute_dtype=compute_dtype)
