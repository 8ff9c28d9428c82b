"""SD3.5 Medium and Flux.1 rows of bench/bench_gpu.py (issue 18).

* it/s at 1024x1024 (128x128 latent) in bf16: SD3.5 Medium (a CFG batch of 2, 77 + 256
  text tokens) and full-size Flux.1 [schnell] (batch 1, 256 T5 tokens), each as
  diffusers' transformer, Easel dense bf16, Easel float8 e4m3fn storage and Easel GGUF
  Q8_0 storage (both computing in bf16; `modules.nn.lowbit`), on the same random weights
  (`bench/flow_pairs.py`; Q8_0 blocks are made here from the bf16 weights).
* Peak VRAM of one 1024x1024 job (a T5-XXL encode of 256 tokens, 2 steps, the 16-channel
  VAE decode; CLIP encoders left out) in the normal and `--medvram` modes
  (`modules.models.offload.ComponentPlacer`), SD3.5 Medium in bf16 and Flux.1 in bf16,
  float8 and Q8_0. `diffusion_peak_vram_gb` is the peak before the VAE decode.

With `--dry-run` the same code runs tiny configs on the CPU.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from bench import flow_pairs as pairs

STORAGES = ("bf16", "fp8", "Q8_0")


@dataclass(frozen=True)
class FlowSetup:
    device: torch.device
    dtype: torch.dtype
    size: str  # "tiny" or "full"
    side: int  # latent side
    sd3_tokens: int
    flux_tokens: int

    @property
    def vae(self):
        from modules.nn.configs import FLUX_VAE

        if self.size == "tiny":
            return dataclasses.replace(FLUX_VAE, ch=32, ch_mult=(1, 2), num_res_blocks=1)
        return FLUX_VAE


def flow_setup(device: torch.device, dry_run: bool) -> FlowSetup:
    if dry_run:
        return FlowSetup(device, torch.bfloat16, "tiny", 8, 7, 5)
    return FlowSetup(device, torch.bfloat16, "full", 128, 77 + 256, 256)


def q8_0(weight: torch.Tensor):
    """GGML Q8_0 blocks of a weight: per 32 values an fp16 scale and 32 int8 values."""
    from gguf import GGMLQuantizationType

    from modules.nn.gguf_quants import QuantizedTensor

    blocks = weight.detach().float().reshape(-1, 32)
    scale = blocks.abs().amax(dim=1, keepdim=True) / 127
    values = torch.where(scale > 0, blocks / scale.clamp_min(1e-30), 0.0)
    quantized = values.round().clamp(-127, 127).to(torch.int8)
    data = torch.cat([scale.half().view(torch.uint8), quantized.view(torch.uint8)], dim=1)
    return QuantizedTensor(data.reshape(-1), GGMLQuantizationType.Q8_0, tuple(weight.shape))


def easel_model(family: str, config, state: dict, storage: str, dtype: torch.dtype) -> nn.Module:
    """Our model on `state`'s tensors, its layer weights stored as `storage`."""
    from modules.models.lowbit_load import layer_weight_names, load_low_bit_state
    from modules.nn.lowbit import to_low_bit

    with torch.device("meta"):
        model = pairs.MMDiT(config=config) if family == "sd35" else \
            pairs.FluxTransformer(config=config)
    if storage == "Q8_0":
        layers = layer_weight_names(model)
        state = {k: q8_0(v) if k in layers and v.ndim == 2 and v.shape[1] % 32 == 0 else v
                 for k, v in state.items()}
        load_low_bit_state(model, state, compute_dtype=dtype)
        return pairs.assert_materialised(model)
    model.load_state_dict(state, assign=True)
    if storage == "fp8":
        to_low_bit(model, "float8_e4m3fn", compute_dtype=dtype)
    return pairs.assert_materialised(model)


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def speed_rows(family: str, f: FlowSetup, rate: Callable) -> list[dict]:
    """it/s of diffusers and of Easel in each storage, on the same weights."""
    if family == "sd35":
        config = pairs.sd35_config(f.size)
        ours, theirs = pairs.sd35_pair(config, f.dtype, device=f.device)
        inputs = pairs.sd35_inputs(config, f.side, f.sd3_tokens, f.dtype, f.device)
        reference = pairs.sd35_diffusers_call(theirs, inputs)
        state = ours.state_dict()
        name = f"SD3.5 Medium {f.side * 8}px"
    else:
        config = pairs.flux_config(f.size)
        ours, theirs, state = pairs.flux_pair(config, f.dtype, device=f.device)
        inputs = pairs.flux_inputs(config, f.side, f.flux_tokens, f.dtype, f.device)
        reference = pairs.flux_diffusers_call(theirs, inputs)
        name = f"Flux.1 schnell {f.side * 8}px"
    rows = [{"case": f"{name} diffusers bf16", "it_s": rate(reference)}]
    del theirs, reference
    free_memory(f.device)
    rows.append({"case": f"{name} Easel bf16", "it_s": rate(partial(ours, **inputs))})
    for storage in STORAGES[1:]:
        model = easel_model(family, config, state, storage, f.dtype)
        rows.append({"case": f"{name} Easel {storage}", "it_s": rate(partial(model, **inputs))})
        del model
        free_memory(f.device)
    del ours, state
    free_memory(f.device)
    return rows


def job_components(family: str, storage: str, f: FlowSetup) -> dict[str, nn.Module]:
    from modules.nn.autoencoder import AutoencoderKL

    text = pairs.t5_encoder(pairs.t5_config(f.size), f.dtype, device=f.device)
    with torch.device("meta"):
        vae = AutoencoderKL(config=f.vae)
    vae.load_state_dict(pairs.random_state(pairs.shapes_of(vae), f.dtype, device=f.device),
                        assign=True)
    if family == "sd35":
        config = pairs.sd35_config(f.size)
    else:
        config = pairs.flux_config(f.size)
    with torch.device("meta"):
        shapes = pairs.shapes_of(pairs.MMDiT(config=config) if family == "sd35"
                                 else pairs.FluxTransformer(config=config))
    state = pairs.random_state(shapes, f.dtype, device=f.device)
    model = easel_model(family, config, state, storage, f.dtype)
    return {"text_encoders": text, "unet": model, "vae": pairs.assert_materialised(vae)}


def run_job(family: str, components: dict[str, nn.Module], f: FlowSetup) -> float:
    """T5 encode, 2 steps, VAE decode; returns the peak before the decode (bytes)."""
    text, model, vae = components["text_encoders"], components["unet"], components["vae"]
    batch = 2 if family == "sd35" else 1
    tokens = f.flux_tokens if family == "flux" else min(f.sd3_tokens, 256)
    ids = torch.randint(0, text.config.vocab_size, (1, tokens), device=f.device)
    with torch.inference_mode():
        context = text(ids).expand(batch, -1, -1)
        if family == "sd35":
            clip = torch.zeros(batch, f.sd3_tokens - tokens, context.shape[-1],
                               device=f.device, dtype=f.dtype)
            context = torch.cat([clip, context], dim=1)
        x = torch.randn(batch, 16, f.side, f.side, device=f.device, dtype=f.dtype)
        y = torch.zeros(batch, model.config.adm_in_channels if family == "sd35"
                        else model.config.vec_in_dim, device=f.device, dtype=f.dtype)
        t = torch.full((batch,), 500.0 if family == "sd35" else 0.5, device=f.device)
        for _ in range(2):
            x = model(x, t, context, y)
        peak = torch.cuda.max_memory_allocated(f.device) if f.device.type == "cuda" else 0
        vae.decode(x[:1])
    return peak


def peak_vram_row(family: str, storage: str, mode_name: str, f: FlowSetup) -> dict:
    from modules.models.offload import ComponentPlacer, MemoryMode

    mode = MemoryMode(mode_name)
    components = job_components(family, storage, f)
    home = f.device if mode is MemoryMode.NORMAL else torch.device("cpu")
    for module in components.values():
        module.to(home)
    placer = ComponentPlacer(components=components, device=f.device, mode=mode)
    free_memory(f.device)
    if f.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(f.device)
    diffusion_peak = run_job(family, components, f)
    if f.device.type == "cuda":
        torch.cuda.synchronize(f.device)
    peak = torch.cuda.max_memory_allocated(f.device) if f.device.type == "cuda" else 0
    placer.remove()
    del components, placer
    free_memory(f.device)
    label = "SD3.5 Medium" if family == "sd35" else "Flux.1 schnell"
    return {"case": f"{label} {storage} {f.side * 8}px peak VRAM {mode_name}",
            "peak_vram_gb": round(peak / 1e9, 3),
            "diffusion_peak_vram_gb": round(diffusion_peak / 1e9, 3)}


VRAM_CASES = (("sd35", "bf16"), ("flux", "bf16"), ("flux", "fp8"), ("flux", "Q8_0"))


def flow_rows(device: torch.device, dry_run: bool, rate: Callable) -> list[dict]:
    """Every SD3.5 / Flux row; `rate(step)` measures a step's it/s (bench_gpu's)."""
    f = flow_setup(device, dry_run)
    rows = speed_rows("sd35", f, rate) + speed_rows("flux", f, rate)
    for family, storage in VRAM_CASES:
        for mode in ("normal", "medvram"):
            rows.append(peak_vram_row(family, storage, mode, f))
    return rows
