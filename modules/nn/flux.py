"""The Flux.1 transformer ([dev] and [schnell]), as a denoiser of 16-channel latents.

Flux.1 (Black Forest Labs, 2024, https://github.com/black-forest-labs/flux) predicts the
velocity of a rectified flow (Liu et al., 2022, "Flow Straight and Fast"; Esser et al.,
2024, https://arxiv.org/abs/2403.03206): with x_t = (1 - t) x_0 + t noise, the network
returns v = noise - x_0, so x_0 = x_t - t v. The blocks are in `flux_blocks.py`.

The network sees tokens: the latent image is cut into 2x2 patches (16 channels x 4 =
64 features per token, "packed" latents) with position ids (0, row, column); the T5
tokens (4096 wide) get position ids (0, 0, 0). A vector `vec` conditions every block:
the embedded timestep (sinusoidal features of 1000 t, 256 channels), the embedded
guidance strength for the guidance-distilled [dev] model, and the pooled CLIP-L vector.

`FluxTransformer.forward(x, timesteps, context, y, guidance)` takes and returns the
latent image [B, 16, H, W], patchifying and making the position ids itself, so a sampler
calls it the way it calls the U-Net. Odd H or W are padded (edge values) to even and the
output cropped back. `forward_tokens` is the reference implementation's own interface
(packed tokens and explicit ids).

Attribute names are Black Forest Labs' (`img_in`, `time_in.in_layer`, `vector_in`,
`guidance_in`, `txt_in`, `double_blocks.N`, `single_blocks.N`, `final_layer`), so BFL's
files (and ComfyUI/Forge checkpoints under `model.diffusion_model.`) load by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import AttentionBackend, Cancel, check, set_attention_backend
from modules.nn.flux_blocks import (
    DoubleStreamBlock,
    LastLayer,
    MLPEmbedder,
    PositionEmbedding,
    SingleStreamBlock,
)
from modules.nn.lowbit import weight_dtype
from modules.nn.timestep import timestep_embedding

# Side of the square image patch that becomes one token.
PATCH = 2
# Channels of the sinusoidal timestep and guidance features.
TIME_FEATURES = 256
# Timesteps t in [0, 1] are embedded as 1000 t (the scale the model was trained on).
TIME_FACTOR = 1000.0


@dataclass(frozen=True, kw_only=True)
class FluxConfig:
    """The hyper-parameters of BFL's `FluxParams`.

    `in_channels` counts the features of one packed token (latent channels x 2 x 2);
    `axes_dim` splits each head's channels between the (t, h, w) rotary axes and must
    sum to `hidden_size / num_heads`. [dev] has `guidance_embed`, [schnell] has not.
    """

    in_channels: int = 64
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple[int, ...] = (16, 56, 56)
    theta: int = 10_000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads")
        if sum(self.axes_dim) != self.head_dim:
            raise ValueError(f"axes_dim {self.axes_dim} must sum to the head dim {self.head_dim}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def latent_channels(self) -> int:
        """Channels of the latent image (one token holds a 2x2 patch of them)."""
        return self.in_channels // (PATCH * PATCH)


FLUX_DEV = FluxConfig(guidance_embed=True)
FLUX_SCHNELL = FluxConfig(guidance_embed=False)


def tiny_flux_config(*, guidance_embed: bool = True) -> FluxConfig:
    """A Flux of about 0.5M parameters for tests: 16 latent channels, 2 heads of 32."""
    return FluxConfig(
        hidden_size=64, num_heads=2, axes_dim=(8, 12, 12), depth=2, depth_single_blocks=2,
        context_in_dim=32, vec_in_dim=16, guidance_embed=guidance_embed,
    )


def patchify(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] latents (H, W even) to [B, H/2 * W/2, C * 4] tokens, row-major."""
    batch, channels, height, width = x.shape
    patches = x.view(batch, channels, height // PATCH, PATCH, width // PATCH, PATCH)
    return patches.permute(0, 2, 4, 1, 3, 5).reshape(batch, -1, channels * PATCH * PATCH)


def unpatchify(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of `patchify` for an (even) `height` x `width` latent."""
    batch, _, features = tokens.shape
    channels = features // (PATCH * PATCH)
    patches = tokens.view(batch, height // PATCH, width // PATCH, channels, PATCH, PATCH)
    return patches.permute(0, 3, 1, 4, 2, 5).reshape(batch, channels, height, width)


def image_position_ids(batch: int, height: int, width: int,
                       device: torch.device | None = None) -> torch.Tensor:
    """(B, H/2 * W/2, 3) ids (0, row, column) of the patches of a `height` x `width` latent."""
    rows = torch.arange(height // PATCH, device=device, dtype=torch.float32)
    cols = torch.arange(width // PATCH, device=device, dtype=torch.float32)
    grid = torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=-1).flatten(0, 1)
    ids = torch.cat([torch.zeros_like(grid[:, :1]), grid], dim=-1)
    return ids.expand(batch, -1, -1)


def text_position_ids(batch: int, tokens: int,
                      device: torch.device | None = None) -> torch.Tensor:
    """(B, tokens, 3) zero ids: the text tokens all sit at the origin."""
    return torch.zeros(batch, tokens, 3, device=device)


class FluxTransformer(nn.Module):
    """BFL's `Flux` model, configured by a `FluxConfig` (FLUX_DEV, FLUX_SCHNELL)."""

    def __init__(self, *, config: FluxConfig) -> None:
        """:param config: the architecture numbers (see `FluxConfig`)."""
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        # Rotary position embedding over (t, h, w) ids; no weights.
        self.pe_embedder = PositionEmbedding(theta=config.theta, axes_dim=config.axes_dim)
        # Input projections: packed latent patches, then the conditioning vector's parts.
        self.img_in = nn.Linear(config.in_channels, hidden, bias=True)
        self.time_in = MLPEmbedder(in_dim=TIME_FEATURES, hidden_dim=hidden)
        self.vector_in = MLPEmbedder(in_dim=config.vec_in_dim, hidden_dim=hidden)
        if config.guidance_embed:
            self.guidance_in = MLPEmbedder(in_dim=TIME_FEATURES, hidden_dim=hidden)
        self.txt_in = nn.Linear(config.context_in_dim, hidden)
        # Double-stream blocks (separate image / text weights), then single-stream ones.
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(hidden_size=hidden, num_heads=config.num_heads,
                              mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias)
            for _ in range(config.depth)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden_size=hidden, num_heads=config.num_heads,
                              mlp_ratio=config.mlp_ratio)
            for _ in range(config.depth_single_blocks)
        )
        # Modulated norm and projection of the image tokens back to patch features.
        self.final_layer = LastLayer(hidden_size=hidden, out_channels=config.in_channels)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, in which the network computes."""
        return weight_dtype(self.img_in)  # per step: never dequantize a low-bit weight for it

    def set_attention_backend(self, name: str | AttentionBackend) -> AttentionBackend:
        """Choose the attention kernel ("sdpa", "xformers", "sliced", "auto") for this model."""
        return set_attention_backend(self, name)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | float,
        context: torch.Tensor,
        y: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
        *,
        cancel: Cancel | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity of latents `x`.

        :param x: (B, 16, H, W) latents (scaled and shifted as the VAE's latent space says)
        :param timesteps: (B,) flow times t in [0, 1] (sigma; 1 = pure noise), or one
            0-d tensor or float for all
        :param context: (B, S, 4096) T5 encoder tokens
        :param y: (B, 768) pooled CLIP-L vector
        :param guidance: distilled guidance strength ((B,), 0-d or a float; e.g. 3.5),
            required by [dev]; ignored by [schnell], which has no `guidance_in`
        :param cancel: its `check()` runs between blocks and attention chunks
        :return: (B, 16, H, W) velocity in the dtype of `x`; x_0 = x - t * velocity
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = height % PATCH, width % PATCH
        latents = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else x
        batch, _, padded_h, padded_w = latents.shape
        img_ids = image_position_ids(batch, padded_h, padded_w, x.device)
        txt_ids = text_position_ids(batch, context.shape[1], x.device)
        tokens = self.forward_tokens(patchify(latents), img_ids, context, txt_ids, timesteps, y,
                                     guidance, cancel=cancel)
        out = unpatchify(tokens, padded_h, padded_w)[..., :height, :width]
        return out.to(x.dtype)

    def forward_tokens(
        self,
        img: torch.Tensor,
        img_ids: torch.Tensor,
        txt: torch.Tensor,
        txt_ids: torch.Tensor,
        timesteps: torch.Tensor | float,
        y: torch.Tensor,
        guidance: torch.Tensor | float | None = None,
        *,
        cancel: Cancel | None = None,
    ) -> torch.Tensor:
        """BFL's interface: packed tokens (B, L, 64) and ids (B, L, 3) in, (B, L, 64) out."""
        dtype = self.dtype
        vec = self._conditioning(timesteps, y, guidance, batch=img.shape[0], dtype=dtype)
        img = self.img_in(img.to(dtype))
        txt = self.txt_in(txt.to(dtype))
        rotary = self.pe_embedder(torch.cat([txt_ids, img_ids], dim=1))
        for block in self.double_blocks:
            check(cancel)
            img, txt = block(img, txt, vec, rotary, cancel)
        # One stream of [text, image] tokens for the single-stream blocks.
        joint = torch.cat([txt, img], dim=1)
        for block in self.single_blocks:
            check(cancel)
            joint = block(joint, vec, rotary, cancel)
        return self.final_layer(joint[:, txt.shape[1]:], vec)

    def _conditioning(
        self, timesteps: torch.Tensor | float, y: torch.Tensor,
        guidance: torch.Tensor | float | None, *, batch: int, dtype: torch.dtype,
    ) -> torch.Tensor:
        """The vector `vec`: embedded timestep (+ embedded guidance for [dev]) + pooled CLIP."""
        timesteps = torch.as_tensor(timesteps, device=y.device)
        vec = self.time_in(_time_features(timesteps, batch).to(dtype))
        if self.config.guidance_embed:
            if guidance is None:
                raise ValueError("this Flux model is guidance-distilled ([dev]): pass `guidance`")
            guidance = torch.as_tensor(guidance, device=y.device)
            vec = vec + self.guidance_in(_time_features(guidance, batch).to(dtype))
        return vec + self.vector_in(y.to(dtype))


def _time_features(values: torch.Tensor, batch: int) -> torch.Tensor:
    """256 sinusoidal features of 1000 * value, for a (B,) or 0-d tensor of values."""
    if values.ndim == 0:
        values = values.expand(batch)
    return timestep_embedding(values.float() * TIME_FACTOR, TIME_FEATURES)
