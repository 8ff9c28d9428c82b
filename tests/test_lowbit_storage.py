"""Diffusion in Low Bits: float8 and GGUF storage of a U-Net, an MMDiT and a Flux.

Two kinds of proof:
- exactness of the mechanism: a low-bit model computes bit for bit what the dense model
  holding the rounded (float8) or dequantized (GGUF) weights computes;
- the format's error, measured against the original: relative L2 error of the output,
  ||out - ref|| / ||ref||. One 1024x1024 layer of Gaussian weights: bf16 0.17 %,
  e4m3fn 2.7 %, e5m2 5.2 %, Q8_0 0.54 %, Q6_K 1.9 %, Q5_K 3.8 %, Q5_0 4.3 %, Q4_K 7.8 %,
  Q4_0 8.6 %. These tiny random networks amplify that ~4-10x (bf16 against float32
  alone gives 1.6 % on the U-Net, 3.2 % on the MMDiT). Measured (tolerance ≈ 1.5x):
  U-Net (tiny SD1, bf16): e4m3fn 10.3 %, e5m2 19.1 %;
  U-Net (float32): Q8_0 1.8 %, Q5_0 14.4 %, Q4_0 28.5 % (widths 32/64: no k-quants);
  MMDiT (hidden 256, bf16): e4m3fn 20.1 %, e5m2 33.5 %;
  MMDiT (float32): Q8_0 4.4 %, Q6_K 15.3 %, Q5_K 23.0 %, Q5_0 29.2 %, Q4_K 39.7 %,
  Q4_0 44.6 %.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

from modules.models.gguf_io import read_gguf
from modules.models.lowbit_load import (
    STORAGE_CHOICES,
    apply_storage_label,
    layer_weight_names,
    load_diffusion_weights,
    load_low_bit_state,
    low_bit_layers,
    low_bits_infotext,
    storage_for_label,
)
from modules.nn.flux import FluxConfig, FluxTransformer
from modules.nn.gguf_quants import QuantizedTensor
from modules.nn.lowbit import LowBitConv2d, LowBitLinear, storage_bytes, to_low_bit
from modules.nn.mmdit import MMDiT
from modules.nn.unet import UNetModel
from modules.settings import Settings
from tests.gguf_kquants import quantize
from tests.mmdit_configs import TINY_SD3, random_mmdit
from tests.test_gguf import write_gguf
from tests.tiny import TINY_SD15

Q = GGMLQuantizationType
MMDIT_256 = dataclasses.replace(TINY_SD3, depth=4, head_dim=64, adm_in_channels=256,
                                context_in_channels=256)
FP8_TOLERANCE = {("unet", "float8_e4m3fn"): 0.15, ("unet", "float8_e5m2"): 0.3,
                 ("mmdit", "float8_e4m3fn"): 0.3, ("mmdit", "float8_e5m2"): 0.5}
GGUF_TOLERANCE = {
    "unet": {Q.Q8_0: 0.03, Q.Q5_0: 0.2, Q.Q4_0: 0.4},
    "mmdit": {Q.Q8_0: 0.07, Q.Q6_K: 0.23, Q.Q5_K: 0.35, Q.Q5_0: 0.45, Q.Q4_K: 0.6,
              Q.Q4_0: 0.65},
}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


def random_unet() -> UNetModel:
    torch.manual_seed(0)
    model = UNetModel(config=TINY_SD15.unet).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model


@pytest.fixture(scope="module")
def models():
    """name -> (float32 model, builder on meta, inputs)."""
    gen = torch.Generator().manual_seed(1)
    t = torch.tensor([500.0])
    unet_inputs = (torch.randn(1, 4, 16, 16, generator=gen), t,
                   torch.randn(1, 7, 32, generator=gen))
    mmdit_inputs = (torch.randn(1, 16, 16, 16, generator=gen), t,
                    torch.randn(1, 8, 256, generator=gen), torch.randn(1, 256, generator=gen))
    return {
        "unet": (random_unet(), lambda: UNetModel(config=TINY_SD15.unet), unet_inputs),
        "mmdit": (random_mmdit(MMDIT_256), lambda: MMDiT(config=MMDIT_256), mmdit_inputs),
    }


def run(model: nn.Module, inputs: tuple, dtype: torch.dtype) -> torch.Tensor:
    cast = [x.to(dtype) if x.dim() > 1 else x for x in inputs]
    with torch.inference_mode():
        return model.eval()(*cast)


def rounded_dense(model: nn.Module, storage: str) -> nn.Module:
    """The dense model holding its layer weights rounded through `storage`."""
    dense = copy.deepcopy(model)
    fmt = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}[storage]
    with torch.no_grad():
        for module in dense.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.copy_(module.weight.to(fmt).to(module.weight.dtype))
    return dense


@pytest.mark.parametrize("name", ["unet", "mmdit"])
@pytest.mark.parametrize("storage", ["float8_e4m3fn", "float8_e5m2"])
def test_float8_storage_matches_bf16(models, name, storage):
    model, _, inputs = models[name]
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    low = to_low_bit(copy.deepcopy(bf16), storage)
    layers = low_bit_layers(low)
    assert layers and set(layers.values()) == {storage}
    assert not any(type(m) in (nn.Linear, nn.Conv2d) for m in low.modules())
    out = run(low, inputs, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    # Exact: what the dense model computes with the float8-rounded weights.
    assert torch.equal(out, run(rounded_dense(bf16, storage), inputs, torch.bfloat16))
    assert relative_error(out, run(bf16, inputs, torch.bfloat16)) < FP8_TOLERANCE[name, storage]


@pytest.mark.parametrize("name", ["unet", "mmdit"])
def test_float8_model_holds_half_the_bytes_of_bf16(models, name):
    bf16 = copy.deepcopy(models[name][0]).to(torch.bfloat16)
    low = to_low_bit(copy.deepcopy(bf16), "float8_e4m3fn")
    layer_bytes = sum(m.stored_weight.numel() * m.stored_weight.element_size()
                      for m in low.modules() if isinstance(m, (LowBitLinear, LowBitConv2d)))
    dense_layer_bytes = sum(m.weight.numel() * 2 for m in bf16.modules()
                            if isinstance(m, (nn.Linear, nn.Conv2d)))
    assert layer_bytes * 2 == dense_layer_bytes
    ratio = storage_bytes(low) / storage_bytes(bf16)
    assert 0.49 < ratio < 0.53  # measured 0.505 (U-Net), 0.503 (MMDiT): norms stay bf16


def gguf_of(model: nn.Module, qtype: GGMLQuantizationType, path) -> int:
    """Write `model` as city96's converters do: layer weights whose rows are whole blocks
    quantized (conv weights as (out, in*kh*kw) rows), everything else float32."""
    layer_weights = layer_weight_names(model)
    block = GGML_QUANT_SIZES[qtype][0]
    tensors = {}
    for key, value in model.state_dict().items():
        array = value.detach().float().numpy()
        rows = array.reshape(array.shape[0], -1) if array.ndim > 1 else array
        if key in layer_weights and rows.ndim == 2 and rows.shape[1] % block == 0:
            tensors[key] = (quantize(rows, qtype), qtype)
        else:
            tensors[key] = (array, None)
    write_gguf(path, tensors)
    return sum(1 for _, qt in tensors.values() if qt is not None)


def dequantized_dense(build, path) -> nn.Module:
    """The dense float32 model holding the GGUF file's weights dequantized."""
    with torch.device("meta"):
        dense = build()
    state = {k: v.dequantize() if isinstance(v, QuantizedTensor) else v
             for k, v in read_gguf(path).items()}
    shapes = dict(dense.state_dict())
    dense.load_state_dict({k: v.reshape(shapes[k].shape) for k, v in state.items()},
                          assign=True)
    return dense


GGUF_CASES = [(name, qtype) for name, table in GGUF_TOLERANCE.items() for qtype in table]


@pytest.mark.parametrize(("name", "qtype"), GGUF_CASES, ids=lambda v: getattr(v, "name", v))
def test_gguf_storage_matches_float32(models, tmp_path, name, qtype):
    model, build, inputs = models[name]
    path = tmp_path / f"{name}-{qtype.name}.gguf"
    quantized = gguf_of(model, qtype, path)
    with torch.device("meta"):
        low = build()
    report = load_diffusion_weights(low, path, compute_dtype=torch.float32)
    assert report.missing == [] and report.unexpected == []
    assert len(report.low_bit_layers) == quantized > 0
    assert set(low_bit_layers(low).values()) == {qtype.name}
    out = run(low, inputs, torch.float32)
    assert torch.equal(out, run(dequantized_dense(build, path), inputs, torch.float32))
    assert relative_error(out, run(model, inputs, torch.float32)) < GGUF_TOLERANCE[name][qtype]
    if qtype == Q.Q8_0:  # 34 bytes per 32 weights instead of 128
        assert storage_bytes(low) < 0.3 * storage_bytes(model)


def fp8_unet_file(tmp_path, model: nn.Module, storage_dtype: torch.dtype | None):
    """A single-file checkpoint: U-Net under `model.diffusion_model.`, layer weights in
    `storage_dtype` (None: bf16), the rest bf16, plus a VAE tensor to be skipped."""
    weights = layer_weight_names(model)
    state = {f"model.diffusion_model.{k}": v.to(storage_dtype if storage_dtype is not None
                                                and k in weights else torch.bfloat16)
             for k, v in model.state_dict().items()}
    state["first_stage_model.decoder.conv_out.bias"] = torch.zeros(3)
    path = tmp_path / "unet.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(("stored", "label", "expected"), [
    (torch.float8_e4m3fn, "Automatic", "float8_e4m3fn"),
    (torch.float8_e5m2, "Automatic", "float8_e5m2"),
    (torch.float8_e4m3fn, "float8-e5m2", "float8_e5m2"),
    (None, "float8-e4m3fn (fp16 LoRA)", "float8_e4m3fn"),
    (None, "Automatic", None),
])
def test_safetensors_float8_kept_or_converted_at_load(models, tmp_path, stored, label, expected):
    model, build, inputs = models["unet"]
    path = fp8_unet_file(tmp_path, model, stored)
    with torch.device("meta"):
        low = build()
    report = load_diffusion_weights(low, path, storage_label=label, compute_dtype=torch.bfloat16,
                                    prefix="model.diffusion_model.")
    assert report.missing == [] and report.unexpected == []
    formats = set(low_bit_layers(low).values())
    assert formats == ({expected} if expected else set())
    assert all(not t.is_meta for t in [*low.parameters(), *low.buffers()])
    assert run(low, inputs, torch.bfloat16).dtype == torch.bfloat16
    if expected == "float8_e4m3fn" and stored is not None:  # kept: the file's bytes
        layer = low.get_submodule("input_blocks.0.0")
        assert layer.stored_form().dtype == torch.float8_e4m3fn


def test_lora_replacement_through_functional_call(models):
    low = to_low_bit(copy.deepcopy(models["unet"][0]), "float8_e4m3fn")
    layer = low.get_submodule("time_embed.0")
    x = torch.randn(2, layer.in_features)
    plain = layer(x)
    merged = layer.weight + 0.5  # what the patcher hands functional_call
    patched = functional_call(layer, {"weight": merged}, (x,), strict=False)
    assert torch.allclose(patched, nn.functional.linear(x, merged, layer.bias))
    assert layer._parameters["weight"] is None  # swapped back: the stored bytes again
    assert torch.equal(layer(x), plain)


def test_dtype_moves_change_the_compute_dtype_not_the_bytes(models):
    low = to_low_bit(copy.deepcopy(models["unet"][0]).to(torch.bfloat16), "float8_e4m3fn")
    layer = low.get_submodule("out.2")
    stored = layer.stored_weight.clone()
    low.float()
    assert layer.compute_dtype == torch.float32 and layer.weight.dtype == torch.float32
    assert torch.equal(layer.stored_weight, stored) and stored.dtype == torch.uint8
    assert low.dtype == torch.float32  # the U-Net's dtype reads a layer's weight


def test_state_dict_keeps_names_and_reloads(models):
    model, build, inputs = models["unet"]
    low = to_low_bit(copy.deepcopy(model), "float8_e5m2")
    state = low.state_dict()
    assert set(state) == set(model.state_dict())
    assert state["input_blocks.0.0.weight"].dtype == torch.float8_e5m2
    with torch.device("meta"):
        again = build()
    report = load_low_bit_state(again, state, compute_dtype=torch.float32)
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(run(again, inputs, torch.float32), run(low, inputs, torch.float32))


def test_labels_setting_and_infotext(models):
    meta = {f.name: f.metadata for f in dataclasses.fields(Settings)}["forge_unet_storage_dtype"]
    assert meta["choices"] == STORAGE_CHOICES and Settings().forge_unet_storage_dtype == "Automatic"
    assert meta["infotext"] == "Diffusion in Low Bits"
    assert storage_for_label("Automatic") is None
    assert storage_for_label("float8-e4m3fn") == "float8_e4m3fn"
    assert storage_for_label("float8-e5m2 (fp16 LoRA)") == "float8_e5m2"
    with pytest.raises(ValueError, match="bnb-nf4"):
        storage_for_label("bnb-nf4")
    assert low_bits_infotext("Automatic") == {}
    assert low_bits_infotext("float8-e4m3fn") == {"Diffusion in Low Bits": "float8-e4m3fn"}
    dense = copy.deepcopy(models["unet"][0])
    assert low_bits_infotext("float8-e4m3fn", dense) == {}
    low = apply_storage_label(dense, "float8-e4m3fn")
    assert low_bits_infotext("float8-e4m3fn", low) == {"Diffusion in Low Bits": "float8-e4m3fn"}
    assert np.isclose(storage_bytes(low), storage_bytes(models["unet"][0]) * 0.2525, rtol=0.05)


FLUX_256 = FluxConfig(in_channels=64, vec_in_dim=256, context_in_dim=256, hidden_size=256,
                      num_heads=4, depth=1, depth_single_blocks=2, axes_dim=(16, 24, 24))
# Measured: e4m3fn 11.0 %, e5m2 15.1 % (bf16); Q8_0 2.2 %, Q4_K 24.7 % (float32).
FLUX_TOLERANCE = {"float8_e4m3fn": 0.17, "float8_e5m2": 0.23, Q.Q8_0: 0.035, Q.Q4_K: 0.37}


@pytest.fixture(scope="module")
def flux():
    torch.manual_seed(0)
    model = FluxTransformer(config=FLUX_256).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=gen))
    inputs = (torch.randn(1, 16, 16, 16, generator=gen), torch.tensor([0.5]),
              torch.randn(1, 8, 256, generator=gen), torch.randn(1, 256, generator=gen),
              torch.tensor([3.5]))
    return model, inputs


@pytest.mark.parametrize("storage", ["float8_e4m3fn", "float8_e5m2"])
def test_flux_float8(flux, storage):
    model, inputs = flux
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    low = to_low_bit(copy.deepcopy(bf16), storage)
    out = run(low, inputs, torch.bfloat16)
    assert torch.equal(out, run(rounded_dense(bf16, storage), inputs, torch.bfloat16))
    assert relative_error(out, run(bf16, inputs, torch.bfloat16)) < FLUX_TOLERANCE[storage]
    assert 0.49 < storage_bytes(low) / storage_bytes(bf16) < 0.52  # measured 0.502


@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K], ids=lambda t: t.name)
def test_flux_gguf(flux, tmp_path, qtype):
    model, inputs = flux
    path = tmp_path / f"flux-{qtype.name}.gguf"
    quantized = gguf_of(model, qtype, path)
    with torch.device("meta"):
        low = FluxTransformer(config=FLUX_256)
    report = load_diffusion_weights(low, path, compute_dtype=torch.float32)
    assert report.missing == [] and report.unexpected == []
    assert len(report.low_bit_layers) == quantized > 0
    out = run(low, inputs, torch.float32)
    dense = dequantized_dense(lambda: FluxTransformer(config=FLUX_256), path)
    assert torch.equal(out, run(dense, inputs, torch.float32))
    assert relative_error(out, run(model, inputs, torch.float32)) < FLUX_TOLERANCE[qtype]
