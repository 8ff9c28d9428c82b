"""Tiny random SD3.5-style and Flux-style models written in the layouts users have.

Layouts: one all-in-one file (`model.diffusion_model.`, `first_stage_model.` or `vae.`,
`text_encoders.<name>.transformer.`); a diffusion-model file (bare BFL names, or SAI's
MMDiT + VAE) with separate text encoders in `models/text_encoder/` and `ae.safetensors` in
`models/VAE/`; a diffusers folder (diffusers' own converters rename the transformer, a
diffusers `AutoencoderKL` gives the VAE). Widths that are not those of real files are
declared in the `easel.text_encoder` metadata of the separate CLIP files.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.models.flow_detection import CLIP_HEADS_KEY, PART_METADATA_KEY, rope_axes
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.configs import TextEncoderConfig, VAEConfig
from modules.nn.flux import FluxConfig, FluxTransformer
from modules.nn.mmdit import MMDiT, MMDiTConfig
from modules.nn.t5_encoder import T5Config, T5TextEncoder
from modules.nn.text_encoders import TextEncoder

TINY_MMDIT = MMDiTConfig(depth=2, head_dim=16, pos_embed_max_size=8, adm_in_channels=64,
                         context_in_channels=64, qk_norm="rms")
TINY_FLUX = FluxConfig(hidden_size=64, num_heads=2, axes_dim=rope_axes(32), depth=1,
                       depth_single_blocks=1, context_in_dim=64, vec_in_dim=32,
                       guidance_embed=True)
TINY_VAE = VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, z_channels=16, embed_dim=16,
                     use_quant_conv=False)
PIPELINE_VAE = replace(TINY_VAE, ch_mult=(1, 1, 1, 1))
TINY_CLIP_L = TextEncoderConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
HEADS = {CLIP_HEADS_KEY: json.dumps({"clip_l": 2, "clip_g": 2})}  # not in the shapes
TINY_CLIP_G = replace(TINY_CLIP_L, hidden_act="gelu", projection_dim=32)
TINY_T5 = T5Config(hidden_size=64, num_layers=2, num_heads=2, head_dim=32,
                   intermediate_size=96)


def _randomised(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def random_parts(architecture: str, *, seed: int = 0, vae: VAEConfig | None = None
                 ) -> dict[str, dict[str, torch.Tensor]]:
    """Bare-named tensors of each part: "diffusion", "vae", "clip_l", ["clip_g"], "t5xxl";
    `vae`: e.g. `PIPELINE_VAE` (8x down, as the pipeline's sizes assume)."""
    diffusion = (MMDiT(config=TINY_MMDIT) if architecture == "sd3"
                 else FluxTransformer(config=TINY_FLUX))
    parts = {"diffusion": _randomised(diffusion, seed),
             "vae": _randomised(AutoencoderKL(config=vae or TINY_VAE), seed + 1),
             "clip_l": _randomised(TextEncoder(config=TINY_CLIP_L).transformer, seed + 2)}
    if architecture == "sd3":
        parts["clip_g"] = _randomised(TextEncoder(config=TINY_CLIP_G).transformer, seed + 3)
    parts["t5xxl"] = _randomised(T5TextEncoder(config=TINY_T5).transformer, seed + 4)
    return parts


def write_all_in_one(path: Path, parts: dict[str, dict[str, torch.Tensor]], *,
                     vae_prefix: str = "first_stage_model.", metadata: dict | None = None) -> Path:
    """Everything in one file under the ComfyUI / Forge prefixes."""
    prefixes = {"diffusion": "model.diffusion_model.", "vae": vae_prefix}
    tensors = {}
    for kind, part in parts.items():
        prefix = prefixes.get(kind, f"text_encoders.{kind}.transformer.")
        tensors |= {prefix + key: value for key, value in part.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={**HEADS, **(metadata or {})})
    return path


def write_separate(checkpoint: Path, models: Path, parts: dict[str, dict[str, torch.Tensor]], *,
                   with_vae_in_checkpoint: bool = False, t5_names=("t5xxl_fp16",)) -> Path:
    """The diffusion model alone (bare names) and each other part in its folder."""
    tensors = dict(parts["diffusion"])
    if with_vae_in_checkpoint:
        tensors = {"model.diffusion_model." + k: v for k, v in tensors.items()}
        tensors |= {"first_stage_model." + k: v for k, v in parts["vae"].items()}
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(checkpoint))
    encoders = models / "text_encoder"
    encoders.mkdir(parents=True, exist_ok=True)
    for name in ("clip_l", "clip_g"):
        if name in parts:
            save_file(parts[name], str(encoders / f"{name}.safetensors"),
                      metadata={PART_METADATA_KEY: name, CLIP_HEADS_KEY: "2"})
    for name in t5_names:
        save_file(parts["t5xxl"], str(encoders / f"{name}.safetensors"))
    if not with_vae_in_checkpoint:
        (models / "VAE").mkdir(parents=True, exist_ok=True)
        save_file(parts["vae"], str(models / "VAE" / "ae.safetensors"))
    return checkpoint


def diffusers_transformer(architecture: str, tensors: dict[str, torch.Tensor]
                          ) -> dict[str, torch.Tensor]:
    """The diffusion model in diffusers' names, renamed by diffusers' own converter
    (through `tests/flux_oracle.py` for Flux, whose converter assumes full-size widths)."""
    from diffusers.loaders import single_file_utils as converters

    from tests.flux_oracle import bfl_to_diffusers

    if architecture == "sd3":
        return converters.convert_sd3_transformer_checkpoint_to_diffusers(
            {"model.diffusion_model." + k: v.clone() for k, v in tensors.items()})
    return bfl_to_diffusers(tensors, TINY_FLUX)


def write_diffusers(folder: Path, architecture: str, parts: dict[str, dict[str, torch.Tensor]]
                    ) -> Path:
    """A diffusers pipeline folder (`diffusers_transformer` names the transformer)."""
    transformer = diffusers_transformer(architecture, parts["diffusion"])
    pipeline = "StableDiffusion3Pipeline" if architecture == "sd3" else "FluxPipeline"
    encoders = (["clip_l", "clip_g", "t5xxl"] if architecture == "sd3" else ["clip_l", "t5xxl"])
    folders = ["text_encoder", "text_encoder_2", "text_encoder_3"]
    components = {"transformer": transformer, "vae": _diffusers_vae(),
                  **{folders[i]: parts[name] for i, name in enumerate(encoders)}}
    _write_json(folder / "model_index.json",
                {"_class_name": pipeline, **{name: ["x", "y"] for name in components}})
    for name, tensors in components.items():
        file = "diffusion_pytorch_model" if name in ("transformer", "vae") else "model"
        (folder / name).mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(folder / name / f"{file}.safetensors"))
    _write_json(folder / "vae" / "config.json", DIFFUSERS_VAE_CONFIG)
    for name in folders[:len(encoders) - 1]:  # the CLIP encoders: their heads
        _write_json(folder / name / "config.json", {"num_attention_heads": 2})
    return folder


DIFFUSERS_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 1,
    "block_out_channels": [32, 64], "norm_num_groups": 32, "use_quant_conv": False,
    "use_post_quant_conv": False, "scaling_factor": 1.5305, "shift_factor": 0.0609,
    "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
}


def _diffusers_vae() -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(7)
    config = {k: v for k, v in DIFFUSERS_VAE_CONFIG.items()
              if k not in ("scaling_factor", "shift_factor")}
    return {k: v.clone() for k, v in DiffusersVAE(**config).state_dict().items()}


def _write_json(path: Path, value: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value), encoding="utf-8")
