"""Recognising SD3 / SD3.5 / Flux.1 files and their separate parts from the header alone.

No tensor data is read: names and shapes say everything.

* The diffusion model sits bare (BFL's `flux1-dev.safetensors`: `double_blocks.0...`) or
  under `model.diffusion_model.` (ComfyUI / Forge checkpoints, SAI's SD3.5 files). An
  MMDiT has `joint_blocks.N`; `x_block.attn2` marks MMDiT-X (SD3.5 Medium), `ln_q` the
  RMS qk-norm of SD3.5, no qk-norm is SD3 Medium. A Flux transformer has
  `double_blocks.N`; `guidance_in` marks dev (and its derivatives), none schnell.
* In all-in-one files the VAE sits under `first_stage_model.` or `vae.` and the text
  encoders under `text_encoders.{clip_l,clip_g,t5xxl}.transformer.`.
* SD3.5 Large Turbo is Large's network; it is told apart only by modelspec metadata
  (`modelspec.architecture` / `modelspec.title`) or a file name with "turbo", else it is
  treated as Large.
* Separate parts (`clip_l.safetensors`, `clip_g.safetensors`, `t5xxl_fp16.safetensors`,
  `ae.safetensors`) are classified by `classify_part`: T5 by `encoder.block.N`, CLIP by
  its token embedding (width 768 is CLIP-L, 1280 CLIP-G; scaled-down files say which in
  the `easel.text_encoder` metadata), a VAE by its decoder and its latent channels.

Every config (diffusion model, VAE, encoders) is read off the shapes, so scaled-down
models go through the same code as real ones.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from modules.models.errors import ModelLoadError
from modules.models.flow_families import (
    FLUX_DEV_FAMILY,
    FLUX_SCHNELL_FAMILY,
    SD3_MEDIUM_FAMILY,
    SD35_LARGE_FAMILY,
    SD35_LARGE_TURBO_FAMILY,
    SD35_MEDIUM_FAMILY,
    FlowFamily,
)
from modules.models.flux_keys import flux_config_from_shapes
from modules.models.safetensors_io import TensorInfo
from modules.nn.configs import TextEncoderConfig, VAEConfig
from modules.nn.mmdit import MMDiTConfig
from modules.nn.t5_encoder import T5Config

Shapes = dict[str, tuple[int, ...]]
DIFFUSION_PREFIXES = ("model.diffusion_model.", "")
VAE_PREFIXES = ("first_stage_model.", "vae.")
MMDIT_KEY = "x_embedder.proj.weight"
FLUX_KEY = "double_blocks.0.img_attn.qkv.weight"
T5_KEY = "encoder.block.0.layer.0.SelfAttention.q.weight"
CLIP_KEYS = ("text_model.embeddings.token_embedding.weight", "embeddings.token_embedding.weight")
PART_METADATA_KEY = "easel.text_encoder"
# CLIP head counts are not in the shapes (real files: width / 64). Scaled-down files state
# them: a JSON object {"clip_l": 4, ...} in an all-in-one file, a number in a separate one.
CLIP_HEADS_KEY = "easel.clip_heads"
CLIP_WIDTHS = {768: "clip_l", 1280: "clip_g"}


@dataclass(frozen=True)
class FlowLayout:
    """Where one file keeps the parts of a flow model, and the family it belongs to."""

    family: FlowFamily
    diffusion_prefix: str
    vae_prefix: str | None  # None: the file has no VAE
    encoders: tuple[str, ...]  # text encoders the file carries (under their spec prefixes)


@dataclass(frozen=True)
class Part:
    """A separate file's kind: "clip_l", "clip_g", "t5xxl", "vae" or "diffusion"."""

    kind: str
    config: object  # TextEncoderConfig, T5Config, VAEConfig, or the diffusion layout's family


def shapes_under(header: Mapping[str, TensorInfo], prefix: str) -> Shapes:
    """Shapes of the tensors under `prefix`, with the prefix removed."""
    return {key[len(prefix):]: tuple(info.shape) for key, info in header.items()
            if key.startswith(prefix)}


def detect_flow(header: Mapping[str, TensorInfo], metadata: Mapping[str, object] | None = None,
                *, path: str = "<checkpoint>") -> FlowLayout | None:
    """The layout of an SD3.x / Flux.1 file, or None when the file is not one."""
    for prefix in DIFFUSION_PREFIXES:
        if prefix + MMDIT_KEY in header or prefix + FLUX_KEY in header:
            break
    else:
        return None
    if any(".quant_state." in key or key.endswith(".absmax") for key in header):
        raise ModelLoadError(path, "bitsandbytes NF4 / FP4 weights are not supported; use a "
                                   "16-bit, float8 or GGUF file of this model")
    family = diffusion_family(shapes_under(header, prefix), metadata or {}, path=path)
    vae_prefix = next((p for p in VAE_PREFIXES if p + "decoder.conv_out.weight" in header), None)
    if vae_prefix is not None:
        family = replace(family, vae=vae_config(shapes_under(header, vae_prefix), family.vae,
                                                path=path))
    specs, present = [], []
    for spec in family.text_encoders:
        shapes = shapes_under(header, spec.prefix)
        if shapes:
            config = encoder_config(spec.name, shapes, path=path, base=spec.config)
            spec = replace(spec, config=with_declared_heads(config, metadata, spec.name))
            present.append(spec.name)
        specs.append(spec)
    family = replace(family, text_encoders=tuple(specs))
    return FlowLayout(family=family, diffusion_prefix=prefix, vae_prefix=vae_prefix,
                      encoders=tuple(present))


def diffusion_family(shapes: Shapes, metadata: Mapping[str, object], *,
                     path: str) -> FlowFamily:
    """The family of a bare-named MMDiT or Flux transformer, its config read off `shapes`."""
    try:
        if MMDIT_KEY in shapes:
            config = MMDiTConfig.from_shapes(shapes)
            return replace(_sd3_family(config, metadata, path), diffusion=config)
        head_dim = shapes["double_blocks.0.img_attn.norm.query_norm.scale"][0]
        config = flux_config_from_shapes(shapes, axes_dim=rope_axes(head_dim))
    except (KeyError, ValueError, IndexError) as error:
        raise ModelLoadError(path, f"incomplete diffusion transformer ({error!r} missing "
                                   "or malformed): a partial file?") from error
    family = FLUX_DEV_FAMILY if config.guidance_embed else FLUX_SCHNELL_FAMILY
    return replace(family, diffusion=config)


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Flux's RoPE split of a head: (16, 56, 56) for 128; the same proportions otherwise."""
    time = head_dim // 8
    side = (head_dim - time) // 2
    return time, side, head_dim - time - side


def _sd3_family(config: MMDiTConfig, metadata: Mapping[str, object], path: str) -> FlowFamily:
    if config.x_block_self_attn_layers:
        return SD35_MEDIUM_FAMILY
    if config.qk_norm is None:
        return SD3_MEDIUM_FAMILY
    said = " ".join(str(metadata.get(key, "")) for key in
                    ("modelspec.architecture", "modelspec.title", "modelspec.description"))
    if "turbo" in (said + " " + Path(path).name).lower():
        return SD35_LARGE_TURBO_FAMILY
    return SD35_LARGE_FAMILY


def vae_config(shapes: Shapes, base: VAEConfig, *, path: str) -> VAEConfig:
    """An LDM-named VAE's config from its shapes; latent scale/shift stay the family's."""
    try:
        ch = shapes["encoder.conv_in.weight"][0]
        levels = sorted({int(k.split(".")[2]) for k in shapes if k.startswith("encoder.down.")})
        mult = tuple(shapes[f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels)
        blocks = {k.split(".")[4] for k in shapes if k.startswith("encoder.down.0.block.")}
        z_channels = shapes["encoder.conv_out.weight"][0] // 2
        return replace(base, in_channels=shapes["encoder.conv_in.weight"][1],
                       out_channels=shapes["decoder.conv_out.weight"][0], ch=ch, ch_mult=mult,
                       num_res_blocks=len(blocks), z_channels=z_channels, embed_dim=z_channels,
                       use_quant_conv="quant_conv.weight" in shapes)
    except (KeyError, IndexError) as error:
        raise ModelLoadError(path, f"VAE without {error}: not an LDM-layout VAE") from error


def encoder_config(name: str, shapes: Shapes, *, path: str, base=None
                   ) -> TextEncoderConfig | T5Config:
    """The config of a text encoder `name` ("clip_l", "clip_g", "t5xxl") from its shapes;
    what shapes do not show (T5's token count, CLIP's layer choice) comes from `base`."""
    try:
        if name == "t5xxl":
            config = T5Config.from_shapes(shapes)
            return replace(config, max_tokens=base.max_tokens) if base is not None else config
        return clip_config(name, shapes, base)
    except (KeyError, IndexError, StopIteration) as error:
        raise ModelLoadError(path, f"{name} text encoder without {error}: a partial file?"
                             ) from error


def clip_config(name: str, shapes: Shapes, base: TextEncoderConfig | None = None
                ) -> TextEncoderConfig:
    """A transformers-named CLIP text model's config (`text_model.` level optional)."""
    from modules.models.flow_families import FLUX_CLIP_L, SD3_CLIP_G, SD3_CLIP_L

    bare = {k[len("text_model."):] if k.startswith("text_model.") else k: v
            for k, v in shapes.items()}
    vocab, width = bare["embeddings.token_embedding.weight"]
    layers = {k.split(".")[2] for k in bare if k.startswith("encoder.layers.")}
    base = base or {"clip_g": SD3_CLIP_G, "clip_l": SD3_CLIP_L}.get(name, FLUX_CLIP_L)
    projection = bare.get("text_projection.weight")
    return replace(
        base, source_layout="clip_l", hidden_size=width, vocab_size=vocab, num_layers=len(layers),
        num_heads=max(width // 64, 1),
        intermediate_size=bare["encoder.layers.0.mlp.fc1.weight"][0],
        max_positions=bare["embeddings.position_embedding.weight"][0],
        projection_dim=projection[0] if projection and name == "clip_g" else None,
    )


def with_declared_heads(config, metadata: Mapping[str, object] | None, name: str | None):
    """`config` with the CLIP head count the metadata declares (see `CLIP_HEADS_KEY`)."""
    raw = (metadata or {}).get(CLIP_HEADS_KEY)
    if raw is None or not isinstance(config, TextEncoderConfig):
        return config
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
        heads = int(value[name] if name is not None and isinstance(value, dict) else value)
    except (ValueError, TypeError, KeyError):
        return config
    return replace(config, num_heads=heads) if heads > 0 else config


def clip_heads_metadata(family) -> dict[str, str]:
    """The metadata that keeps a scaled-down family's CLIP head counts in its file."""
    heads = {spec.name: spec.config.num_heads for spec in family.text_encoders
             if isinstance(spec.config, TextEncoderConfig)}
    return {CLIP_HEADS_KEY: json.dumps(heads, sort_keys=True)}


def classify_part(header: Mapping[str, TensorInfo], metadata: Mapping[str, object] | None = None,
                  *, path: str = "<file>") -> Part | None:
    """What a separate file holds, or None for anything that is not a flow-model part."""
    metadata = metadata or {}
    if T5_KEY in header:
        return Part("t5xxl", encoder_config("t5xxl", shapes_under(header, ""), path=path))
    clip_key = next((key for key in CLIP_KEYS if key in header), None)
    if clip_key is not None:
        width = header[clip_key].shape[1]
        role = str(metadata.get(PART_METADATA_KEY) or CLIP_WIDTHS.get(width, ""))
        if role not in ("clip_l", "clip_g"):
            return None
        config = encoder_config(role, shapes_under(header, ""), path=path)
        return Part(role, with_declared_heads(config, metadata, None))
    if "decoder.conv_out.weight" in header and "encoder.conv_out.weight" in header:
        shapes = shapes_under(header, "")
        if "encoder.conv_in.weight" in shapes and any(".down_blocks." in k for k in shapes):
            return None  # diffusers-layout VAE: left to the SD VAE loader
        config = vae_config(shapes, VAEConfig(), path=path)
        return Part("vae", config) if config.embed_dim == 16 else None
    layout = detect_flow(header, metadata, path=path)
    return Part("diffusion", layout) if layout is not None else None

