"""IP-Adapter: an image prompt through decoupled cross-attention.

Ye et al., 2023, "IP-Adapter: Text Compatible Image Prompt Adapter for Text-to-Image
Diffusion Models" (https://arxiv.org/abs/2308.06721). A frozen CLIP image encoder reads
the reference picture; a small projection turns its output into a few "image tokens" of
the text context's width; every cross-attention layer (`attn2`) of the frozen U-Net gets
a second pair of key / value projections (`to_k_ip`, `to_v_ip`) for those tokens and
adds, with the unit's weight, the attention of its own queries to them:

    out = attention(q, k(text), v(text)) + weight * attention(q, to_k_ip(img), to_v_ip(img))

Two projections (the file says which):

* plain (`ip-adapter_sd15`, `ip-adapter_sdxl_vit-h`): the encoder's projected
  `image_embeds` through one linear layer to `n_tokens x context_dim`, then LayerNorm
  (`ImageProjModel`: `image_proj.proj`, `image_proj.norm`);
* plus (`ip-adapter-plus_sd15`, `ip-adapter-plus-face_sd15`, `ip-adapter-plus_sdxl_vit-h`):
  a Perceiver resampler (Jaegle et al., 2021; Alayrac et al., 2022, Flamingo) whose
  learned queries (`latents`) attend to the encoder's penultimate hidden states
  (`image_proj.latents`, `proj_in`, `layers.N.0` attention, `layers.N.1` MLP,
  `proj_out`, `norm_out`).

The unconditional (negative-prompt) rows get the tokens of "no image", as diffusers makes
them: zero `image_embeds` through the projection (plain), the encoder's hidden states of
an all-zero (normalised) picture through the resampler (plus).

The added attention lives in `IPAdapterPatch`, a `UNetPatch` given per U-Net call: the
loaded model is never changed, so other jobs sharing it are unaffected. Which `to_k_ip`
belongs to which `attn2` follows diffusers' attention-processor order (the order of the
file's `ip_adapter.<n>` entries, n = 1, 3, 5, ...: attn1 processors take the even slots):
the encoder's transformer blocks, then the decoder's, then the middle block's
(`cross_attention_layers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from modules.nn.configs import UNetConfig
from modules.nn.unet_patches import AttentionPlace, Stage, UNetPatch, block_places

ProjectionKind = Literal["plain", "plus"]
LayerKey = tuple[Stage, int, int]  # (stage, block index, transformer block index)

# CLIP's image normalisation (OpenAI CLIP `_transform`, transformers' CLIPImageProcessor).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True, kw_only=True)
class IPAdapterConfig:
    """The shapes of one IP-Adapter file.

    :param kind: "plain" (linear projection of image_embeds) or "plus" (resampler over
        the penultimate hidden states)
    :param image_dim: width of the encoder output it reads (image_embeds or hidden states)
    :param context_dim: the U-Net's cross-attention context width
    :param n_tokens: image tokens it makes
    :param layer_widths: query width of each attn2 layer, in `cross_attention_layers` order
    :param resampler_width: the resampler's inner width (plus only)
    :param resampler_depth: its attention + MLP blocks (plus only)
    :param resampler_heads: its attention heads of 64 channels (plus only)
    """

    kind: ProjectionKind
    image_dim: int
    context_dim: int
    n_tokens: int
    layer_widths: tuple[int, ...]
    resampler_width: int = 0
    resampler_depth: int = 0
    resampler_heads: int = 0


def cross_attention_layers(config: UNetConfig) -> list[tuple[LayerKey, int]]:
    """Every attn2 layer of a U-Net with its query width, in diffusers' processor order.

    diffusers registers `down_blocks`, then `up_blocks`, then `mid_block`, so the
    adapter's layers run over the encoder's transformers, the decoder's, the middle's.
    """
    inputs, middle, outputs = block_places(transformer_depth=tuple(config.transformer_depth),
                                           num_res_blocks=config.num_res_blocks)
    layers: list[tuple[LayerKey, int]] = []
    for place in (*inputs, *outputs):
        if place.depth is None:
            continue  # the input convolution, downsampling, levels without attention
        width = config.model_channels * config.channel_mult[place.level]
        layers += [((place.stage, place.index, t), width)
                   for t in range(config.transformer_depth[place.level])]
    width = config.model_channels * config.channel_mult[-1]
    layers += [(("middle", 0, t), width) for t in range(config.transformer_depth_middle)]
    return layers


class ImageProjection(nn.Module):
    """Plain projection: image_embeds -> `n_tokens` tokens, LayerNorm'd (`proj`, `norm`)."""

    def __init__(self, *, image_dim: int, context_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.n_tokens = n_tokens
        self.context_dim = context_dim
        self.proj = nn.Linear(image_dim, n_tokens * context_dim)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(embeds).reshape(embeds.shape[0], self.n_tokens, self.context_dim)
        return self.norm(tokens)


class PerceiverAttention(nn.Module):
    """Latent queries attend to [image features; latents] (`norm1`, `norm2`, `to_q`,
    `to_kv`, `to_out`; no biases)."""

    def __init__(self, *, width: int, heads: int, head_dim: int = 64) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_kv = nn.Linear(width, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, width, bias=False)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features = self.norm1(features)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        # The latents see themselves as well as the image features.
        k, v = self.to_kv(torch.cat([features, latents], dim=-2)).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).flatten(2))


class Resampler(nn.Module):
    """The "plus" projection: learned queries over the encoder's hidden states."""

    def __init__(self, *, image_dim: int, width: int, depth: int, heads: int,
                 context_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.zeros(1, n_tokens, width))
        self.proj_in = nn.Linear(image_dim, width)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width=width, heads=heads), _mlp(width)])
            for _ in range(depth))
        self.proj_out = nn.Linear(width, context_dim)
        self.norm_out = nn.LayerNorm(context_dim)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(hidden.shape[0], -1, -1)
        features = self.proj_in(hidden)
        for attend, mlp in self.layers:
            latents = attend(features, latents) + latents
            latents = mlp(latents) + latents
        return self.norm_out(self.proj_out(latents))


def _mlp(width: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm, linear to 4x, GELU, linear back (indices 0, 1, 3 hold weights)."""
    return nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width * mult, bias=False),
                         nn.GELU(), nn.Linear(width * mult, width, bias=False))


class DecoupledAttention(nn.Module):
    """The image keys / values of one attn2 layer (`to_k_ip`, `to_v_ip`, no biases)."""

    def __init__(self, *, context_dim: int, width: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, width, bias=False)
        self.to_v_ip = nn.Linear(context_dim, width, bias=False)


class IPAdapter(nn.Module):
    """Image projection plus one `DecoupledAttention` per attn2 layer of its U-Net."""

    def __init__(self, *, config: IPAdapterConfig, base: UNetConfig) -> None:
        """:param config: the file's shapes; :param base: the U-Net it attaches to (its
        attn2 layers, `cross_attention_layers`, must match `config.layer_widths`)"""
        super().__init__()
        layers = cross_attention_layers(base)
        if tuple(width for _, width in layers) != config.layer_widths:
            raise ValueError(f"IP-Adapter has {len(config.layer_widths)} attention layers of "
                             f"widths {config.layer_widths}; the U-Net has {len(layers)} of "
                             f"{tuple(width for _, width in layers)}")
        if config.context_dim != base.context_dim:
            raise ValueError(f"IP-Adapter context width {config.context_dim} does not match "
                             f"the U-Net's {base.context_dim}")
        self.config = config
        self.uses_hidden_states = config.kind == "plus"
        if config.kind == "plain":
            self.image_proj: nn.Module = ImageProjection(
                image_dim=config.image_dim, context_dim=config.context_dim,
                n_tokens=config.n_tokens)
        else:
            self.image_proj = Resampler(
                image_dim=config.image_dim, width=config.resampler_width,
                depth=config.resampler_depth, heads=config.resampler_heads,
                context_dim=config.context_dim, n_tokens=config.n_tokens)
        self.layers = nn.ModuleList(
            DecoupledAttention(context_dim=config.context_dim, width=width)
            for _, width in layers)
        # (stage, block, transformer) -> index into `layers`.
        self.layer_index = {key: i for i, (key, _) in enumerate(layers)}

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].to_k_ip.weight.dtype

    def image_tokens(self, embeds: torch.Tensor) -> torch.Tensor:
        """Encoder output (image_embeds (B, D) or hidden states (B, S, D)) -> (B, T, C)."""
        weight = next(self.image_proj.parameters())
        return self.image_proj(embeds.to(device=weight.device, dtype=weight.dtype))


class IPAdapterPatch(UNetPatch):
    """Adds `weight * attention(q, to_k_ip(tokens), to_v_ip(tokens))` to every attn2 output.

    Each row of the U-Net call takes the tokens of its image's reference (`cond_tokens`,
    (n, T, C): one per image, or one for all) or, on negative-prompt rows, of "no image"
    (`uncond_tokens`, same shape); `row_images` / `row_is_uncond` describe the rows, as
    the CFG step does (`modules.sampling.cfg`).
    """

    def __init__(self, *, adapter: IPAdapter, cond_tokens: torch.Tensor,
                 uncond_tokens: torch.Tensor, weight: float, row_images: list[int],
                 row_is_uncond: list[bool]) -> None:
        if cond_tokens.shape != uncond_tokens.shape or cond_tokens.ndim != 3:
            raise ValueError(f"IP-Adapter tokens must be two (n, tokens, channels) tensors of "
                             f"one shape, got {tuple(cond_tokens.shape)} and "
                             f"{tuple(uncond_tokens.shape)}")
        if len(row_images) != len(row_is_uncond):
            raise ValueError("row_images and row_is_uncond must describe the same rows")
        count = cond_tokens.shape[0]
        if count > 1 and any(not 0 <= image < count for image in row_images):
            raise ValueError(f"row_images {row_images} out of range for {count} references")
        self.adapter = adapter
        self.cond_tokens = cond_tokens
        self.uncond_tokens = uncond_tokens
        self.weight = float(weight)
        self.row_images = list(row_images)
        self.row_is_uncond = list(row_is_uncond)
        self._tokens: torch.Tensor | None = None  # per-row tokens, made on first use

    def for_rows(self, rows: list[int]) -> IPAdapterPatch:
        return IPAdapterPatch(adapter=self.adapter, cond_tokens=self.cond_tokens,
                              uncond_tokens=self.uncond_tokens, weight=self.weight,
                              row_images=[self.row_images[r] for r in rows],
                              row_is_uncond=[self.row_is_uncond[r] for r in rows])

    def changes_cross_attention(self, place: AttentionPlace) -> bool:
        return self.weight != 0.0 and self._key(place) in self.adapter.layer_index

    def _key(self, place: AttentionPlace) -> LayerKey:
        return (place.block.stage, place.block.index, place.transformer)

    def _row_tokens(self, like: torch.Tensor) -> torch.Tensor:
        """(rows, T, C): each row's reference or "no image" tokens, in the adapter's dtype."""
        if self._tokens is None:
            pick = [image if self.cond_tokens.shape[0] > 1 else 0 for image in self.row_images]
            rows = [(self.uncond_tokens if uncond else self.cond_tokens)[image]
                    for image, uncond in zip(pick, self.row_is_uncond, strict=True)]
            self._tokens = torch.stack(rows).to(device=like.device, dtype=self.adapter.dtype)
        return self._tokens

    def cross_attention(self, q: torch.Tensor, out: torch.Tensor,
                        place: AttentionPlace) -> torch.Tensor:
        if q.shape[0] != len(self.row_images):
            raise ValueError(f"IP-Adapter: {q.shape[0]} rows in the U-Net call but "
                             f"{len(self.row_images)} described")
        layer = self.adapter.layers[self.adapter.layer_index[self._key(place)]]
        tokens = self._row_tokens(q)
        heads = q.shape[1]
        k = layer.to_k_ip(tokens).to(q.dtype).unflatten(-1, (heads, -1)).transpose(1, 2)
        v = layer.to_v_ip(tokens).to(q.dtype).unflatten(-1, (heads, -1)).transpose(1, 2)
        return out + self.weight * F.scaled_dot_product_attention(q, k, v)


def clip_pixels(picture: Image.Image, size: int) -> torch.Tensor:
    """CLIP's preprocessing: shortest side to `size` (bicubic), centre crop, mean/std.

    Same steps as transformers' `CLIPImageProcessor` (224 for ViT-H / bigG): (1, 3, size, size).
    """
    picture = picture.convert("RGB")
    width, height = picture.size
    short, long = (width, height) if width <= height else (height, width)
    long = int(size * long / short)
    new = (size, long) if width <= height else (long, size)
    resized = picture.resize(new, Image.Resampling.BICUBIC)
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    cropped = resized.crop((left, top, left + size, top + size))
    array = torch.from_numpy(np.asarray(cropped, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)
    return ((array - mean) / std).unsqueeze(0)


@torch.no_grad()
def encode_reference(encoder, adapter: IPAdapter,
                     picture: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond_tokens, uncond_tokens), each (1, T, C), of a reference picture.

    `encoder` is a transformers `CLIPVisionModelWithProjection`; its own `image_size`
    sets the crop (224 for the real encoders).
    """
    parameter = next(encoder.parameters())
    pixels = clip_pixels(picture, int(encoder.config.image_size)).to(
        device=parameter.device, dtype=parameter.dtype)
    if adapter.uses_hidden_states:
        both = torch.cat([pixels, torch.zeros_like(pixels)])
        hidden = encoder(both, output_hidden_states=True).hidden_states[-2]
        tokens = adapter.image_tokens(hidden)
        return tokens[:1], tokens[1:]
    embeds = encoder(pixels).image_embeds
    tokens = adapter.image_tokens(torch.cat([embeds, torch.zeros_like(embeds)]))
    return tokens[:1], tokens[1:]
