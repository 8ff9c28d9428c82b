"""MMDiT: the denoiser of Stable Diffusion 3 and 3.5.

Esser et al., 2024, "Scaling Rectified Flow Transformers for High-Resolution Image
Synthesis" (https://arxiv.org/abs/2403.03206). The 16-channel latent is cut into 2×2
patches, each a token plus a position embedding (a 2-D sin-cos table stored in the file)
cropped from the centre of a `pos_embed_max_size`² grid; the text
tokens (CLIP-L/G hidden states zero-padded to 4096 channels, then T5 tokens) are
projected by `context_embedder`; the conditioning vector `c` = timestep embedding +
pooled-text embedding modulates every block. `depth` joint blocks (see `mmdit_blocks.py`)
mix the two streams; the final layer maps image tokens back to patches: the rectified
flow velocity v (denoised = x − σ·v).

Timesteps: the model is called with t = σ·1000 (σ in [0, 1]), as Stability AI's
`ModelSamplingDiscreteFlow.timestep` and diffusers' `FlowMatchEulerDiscreteScheduler`
(`timesteps = sigmas * num_train_timesteps`, passed as is by `StableDiffusion3Pipeline`).

Sizes (hidden = 64 × depth, heads = depth): SD3 Medium depth 24; SD3.5 Large depth 38
with RMS qk-norm; SD3.5 Medium depth 24, qk-norm, a 384² position grid and MMDiT-X
self-attention in blocks 0–12. Names follow Stability AI's reference so the
`model.diffusion_model.*` tensors of their single files load by name.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import Cancel, check
from modules.nn.lowbit import weight_dtype
from modules.nn.mmdit_blocks import (
    EmbedderMLP,
    FinalLayer,
    JointBlock,
    PatchEmbed,
    TimestepEmbedder,
)


@dataclass(frozen=True, kw_only=True)
class MMDiTConfig:
    """The numbers that decide the MMDiT's shapes.

    `x_block_self_attn_layers`: blocks whose image stream has MMDiT-X's `attn2`.
    `head_dim` is 64 in every released model (hidden = 64 × depth); tiny test builds
    shrink it.
    """

    depth: int = 24
    head_dim: int = 64
    patch_size: int = 2
    in_channels: int = 16
    pos_embed_max_size: int = 192
    adm_in_channels: int = 2048
    context_in_channels: int = 4096
    mlp_ratio: float = 4.0
    qk_norm: Literal["rms"] | None = None
    x_block_self_attn_layers: tuple[int, ...] = ()

    @property
    def hidden_size(self) -> int:
        return self.head_dim * self.depth

    @property
    def num_heads(self) -> int:
        return self.depth

    @property
    def out_channels(self) -> int:
        return self.in_channels

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> MMDiTConfig:
        """The config of a state dict's shapes (keys without `model.diffusion_model.`)."""
        hidden, in_channels, patch, _ = shapes["x_embedder.proj.weight"]
        blocks = {int(key.split(".")[1]) for key in shapes if key.startswith("joint_blocks.")}
        attn2 = {int(key.split(".")[1]) for key in shapes if ".x_block.attn2." in key}
        return cls(
            depth=len(blocks), head_dim=hidden // len(blocks),
            patch_size=patch, in_channels=in_channels,
            pos_embed_max_size=math.isqrt(shapes["pos_embed"][1]),
            adm_in_channels=shapes["y_embedder.mlp.0.weight"][1],
            context_in_channels=shapes["context_embedder.weight"][1],
            qk_norm="rms" if any(key.endswith(".ln_q.weight") for key in shapes) else None,
            x_block_self_attn_layers=tuple(sorted(attn2)),
        )


SD3_MEDIUM = MMDiTConfig(depth=24, pos_embed_max_size=192)
SD35_LARGE = MMDiTConfig(depth=38, pos_embed_max_size=192, qk_norm="rms")
SD35_MEDIUM = MMDiTConfig(depth=24, pos_embed_max_size=384, qk_norm="rms",
                          x_block_self_attn_layers=tuple(range(13)))


class MMDiT(nn.Module):
    """The SD3 / SD3.5 transformer: latent, timestep, text tokens, pooled text -> velocity."""

    def __init__(self, *, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden = config.hidden_size
        self.x_embedder = PatchEmbed(patch_size=config.patch_size,
                                     in_channels=config.in_channels, hidden_size=hidden)
        # Fixed 2-D sin-cos embedding of the largest grid; the file holds its values.
        grid = config.pos_embed_max_size
        self.register_buffer("pos_embed", torch.zeros(1, grid * grid, hidden))
        self.t_embedder = TimestepEmbedder(hidden_size=hidden)
        self.y_embedder = EmbedderMLP(in_features=config.adm_in_channels, hidden_size=hidden)
        self.context_embedder = nn.Linear(config.context_in_channels, hidden)
        self.joint_blocks = nn.ModuleList(
            JointBlock(hidden_size=hidden, heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                       qk_norm=config.qk_norm, pre_only=index == config.depth - 1,
                       self_attn2=index in config.x_block_self_attn_layers)
            for index in range(config.depth)
        )
        self.final_layer = FinalLayer(hidden_size=hidden, patch_size=config.patch_size,
                                      out_channels=config.out_channels)

    def cropped_pos_embed(self, rows: int, cols: int) -> torch.Tensor:
        """The (1, rows·cols, hidden) centre crop of the position grid for a patch grid."""
        grid = self.config.pos_embed_max_size
        if rows > grid or cols > grid:
            size = grid * self.config.patch_size
            raise ValueError(f"latent of {rows}×{cols} patches exceeds this model's "
                             f"{grid}×{grid} position grid ({size}×{size} latent pixels)")
        top, left = (grid - rows) // 2, (grid - cols) // 2
        spatial = self.pos_embed.view(1, grid, grid, -1)[:, top:top + rows, left:left + cols]
        return spatial.reshape(1, rows * cols, -1)

    def unpatchify(self, x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
        """Tokens (B, rows·cols, p·p·C) -> latent (B, C, rows·p, cols·p)."""
        p, channels = self.config.patch_size, self.config.out_channels
        x = x.view(x.shape[0], rows, cols, p, p, channels)
        # Each token's outputs are ordered (patch row, patch column, channel).
        x = x.permute(0, 5, 1, 3, 2, 4)
        return x.reshape(x.shape[0], channels, rows * p, cols * p)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor, *, skip_layers: Sequence[int] = (),
                cancel: Cancel | None = None) -> torch.Tensor:
        """The flow velocity of latent `x`.

        :param x: latent (B, 16, H, W); H, W not multiples of the patch are padded
        :param timesteps: σ·1000, shape (B,) or a scalar
        :param context: text tokens (B, L, 4096)
        :param y: pooled text vector (B, 2048)
        :param skip_layers: block indices to skip (skip-layer guidance)
        :param cancel: checked between blocks
        :return: velocity (B, 16, H, W)
        """
        height, width = x.shape[-2:]
        p = self.config.patch_size
        # Replicate-pad to whole patches; the padding is cropped off the output.
        pad_h, pad_w = -height % p, -width % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        rows, cols = x.shape[-2] // p, x.shape[-1] // p
        dtype = weight_dtype(self.context_embedder)  # no dequantizing per step
        tokens = self.x_embedder(x.to(dtype))
        # `.to(tokens)`: under --lowvram only the blocks visit the device, not this buffer.
        tokens = tokens + self.cropped_pos_embed(rows, cols).to(tokens)
        # Conditioning vector: timestep embedding + pooled text embedding.
        timesteps = timesteps.to(x.device).reshape(-1).expand(x.shape[0])
        c = self.t_embedder(timesteps) + self.y_embedder(y)
        text = self.context_embedder(context.to(dtype))
        for index, block in enumerate(self.joint_blocks):
            check(cancel)
            if index not in skip_layers:
                text, tokens = block(text, tokens, c, cancel=cancel)
        out = self.unpatchify(self.final_layer(tokens, c), rows, cols)
        return out[:, :, :height, :width]
