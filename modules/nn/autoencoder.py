"""The KL-regularised autoencoder that maps images to SD's latent space and back.

Latent Diffusion (Rombach et al., 2022, https://arxiv.org/abs/2112.10752, sec. 3.1 and
appendix G) trains a convolutional VAE (Kingma & Welling, 2014) with a slight KL
penalty: the encoder predicts a diagonal Gaussian (mean, log-variance) per latent pixel,
8x smaller than the image; the decoder maps a latent back to pixels. SD1, SD2 and SDXL
share this layout (CompVis `ldm/models/autoencoder.py`, `AutoencoderKL`), so the
`first_stage_model.` tensors of a checkpoint load by name. SD3 (Esser et al., 2024,
https://arxiv.org/abs/2403.03206, sec. 5.2.1) and Flux.1 widen the latent to 16 channels
and drop the 1x1 convolutions around it (`VAEConfig.use_quant_conv=False`); their files
(`first_stage_model.*`, BFL's `ae.safetensors`) use the same names.

Scaling is NOT applied here: the diffusion model works on `scale_factor * (z - shift)`
(`VAEConfig.scale_factor`, 0.18215 for SD1/SD2, 0.13025 for SDXL); callers scale the
encoder's sample and unscale before `decode`. Images are in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from modules.nn.attention import AttentionBackend, Cancel, check, set_attention_backend
from modules.nn.configs import VAEConfig
from modules.nn.ops import silu_fresh
from modules.nn.vae_blocks import (
    AroundLayer,
    Downsample,
    MidBlock,
    ResnetBlock,
    Upsample,
    group_norm,
)


class DiagonalGaussian:
    """The encoder's posterior N(mean, exp(logvar)) per latent element."""

    def __init__(self, moments: torch.Tensor) -> None:
        """:param moments: (B, 2 * C, h, w), mean channels first, then log-variance."""
        self.mean, logvar = moments.chunk(2, dim=1)
        # LDM clamps the log-variance to keep exp() finite.
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """mean + std * noise, with the standard-normal `noise` supplied by the caller (seeded)."""
        return self.mean + self.std * noise.to(self.mean)

    def mode(self) -> torch.Tensor:
        """The most likely latent: the mean."""
        return self.mean


class EncoderLevel(nn.Module):
    """One resolution of the encoder: `block.j` residual blocks, then `downsample`."""

    def __init__(
        self, *, in_channels: int, out_channels: int, num_blocks: int, downsample: bool, groups: int
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(
            ResnetBlock(in_channels=widths[j], out_channels=widths[j + 1], norm_num_groups=groups)
            for j in range(num_blocks)
        )
        self.downsample = Downsample(channels=out_channels) if downsample else None


class DecoderLevel(nn.Module):
    """One resolution of the decoder: `block.j` residual blocks, then `upsample`."""

    def __init__(
        self, *, in_channels: int, out_channels: int, num_blocks: int, upsample: bool, groups: int
    ) -> None:
        super().__init__()
        widths = [in_channels] + [out_channels] * num_blocks
        self.block = nn.ModuleList(
            ResnetBlock(in_channels=widths[j], out_channels=widths[j + 1], norm_num_groups=groups)
            for j in range(num_blocks)
        )
        self.upsample = Upsample(channels=out_channels) if upsample else None


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> Gaussian moments (B, 2 * z_channels, H / f, W / f)."""

    def __init__(self, *, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.in_channels, config.ch, kernel_size=3, padding=1)
        # Levels from full resolution down; every level but the last halves the size.
        self.down = nn.ModuleList(
            EncoderLevel(
                in_channels=([config.ch] + widths)[i],
                out_channels=widths[i],
                num_blocks=config.num_res_blocks,
                downsample=i != len(widths) - 1,
                groups=groups,
            )
            for i in range(len(widths))
        )
        self.mid = MidBlock(channels=widths[-1], norm_num_groups=groups)
        self.norm_out = group_norm(widths[-1], groups)
        self.conv_out = nn.Conv2d(widths[-1], 2 * config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor, cancel: Cancel | None = None) -> torch.Tensor:
        """:param cancel: its `check()` runs between blocks and attention chunks"""
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                check(cancel)
                h = block(h)
            if level.downsample is not None:
                h = level.downsample(h)
        check(cancel)
        h = self.mid(h, cancel)
        return self.conv_out(silu_fresh(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, 3, h * f, w * f).

    `up.i` is the level at resolution i (0 = full size); they run from the highest i
    down, so `up.{n-1}` comes first. Each level has `num_res_blocks + 1` blocks.
    """

    def __init__(self, *, config: VAEConfig) -> None:
        super().__init__()
        widths = [config.ch * m for m in config.ch_mult]
        groups = config.norm_num_groups
        self.conv_in = nn.Conv2d(config.z_channels, widths[-1], kernel_size=3, padding=1)
        self.mid = MidBlock(channels=widths[-1], norm_num_groups=groups)
        # Level i takes the width of level i + 1 (the one run before it).
        self.up = nn.ModuleList(
            DecoderLevel(
                in_channels=(widths + [widths[-1]])[i + 1],
                out_channels=widths[i],
                num_blocks=config.num_res_blocks + 1,
                upsample=i != 0,
                groups=groups,
            )
            for i in range(len(widths))
        )
        self.norm_out = group_norm(widths[0], groups)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor, cancel: Cancel | None = None,
                mid_attention: AroundLayer | None = None) -> torch.Tensor:
        """:param cancel: its `check()` runs between blocks and attention chunks;
        :param mid_attention: runs the middle attention block for this call (`MidBlock`)"""
        h = self.mid(self.conv_in(z), cancel, mid_attention)
        for level in reversed(self.up):
            for block in level.block:
                check(cancel)
                h = block(h)
            if level.upsample is not None:
                h = level.upsample(h)
        return self.conv_out(silu_fresh(self.norm_out(h)))


class AutoencoderKL(nn.Module):
    """Encoder and decoder, with 1x1 `quant_conv` / `post_quant_conv` next to the latent
    (identities when the config has none)."""

    def __init__(self, *, config: VAEConfig) -> None:
        """:param config: the architecture numbers (see `modules.nn.configs.VAEConfig`)."""
        super().__init__()
        self.config = config
        # Layout of the feature maps (`set_channels_last`).
        self.memory_format = torch.contiguous_format
        self.encoder = Encoder(config=config)
        self.decoder = Decoder(config=config)
        # The 1x1 convolutions next to the latent (SD1/SD2/SDXL only).
        if config.use_quant_conv:
            self.quant_conv = nn.Conv2d(2 * config.z_channels, 2 * config.embed_dim, 1)
            self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, 1)
        else:
            self.quant_conv, self.post_quant_conv = nn.Identity(), nn.Identity()

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.conv_in.weight.dtype

    def set_attention_backend(self, name: str | AttentionBackend) -> AttentionBackend:
        """Choose the attention kernel of the two mid-block attentions ("sdpa", "sliced", ...)."""
        return set_attention_backend(self, name)

    def set_channels_last(self, enabled: bool) -> None:
        """Run on channels-last (NHWC) maps: faster oneDNN / cuDNN convolutions, same results."""
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.to(memory_format=self.memory_format)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.dtype).contiguous(memory_format=self.memory_format)

    def encode(self, x: torch.Tensor, cancel: Cancel | None = None) -> DiagonalGaussian:
        """Image in [-1, 1], (B, 3, H, W) -> posterior over unscaled latents (input's dtype);
        `cancel.check()` may abandon it between blocks."""
        moments = self.quant_conv(self.encoder(self._prepare(x), cancel))
        return DiagonalGaussian(moments.to(x.dtype).contiguous())

    def decode(self, z: torch.Tensor, cancel: Cancel | None = None,
               mid_attention: AroundLayer | None = None) -> torch.Tensor:
        """Unscaled latent (B, embed_dim, h, w) -> image in about [-1, 1] (input's dtype);
        `cancel.check()` may abandon it between blocks; `mid_attention` wraps the decoder's
        middle attention block for this call (HyperTile's VAE option), default unchanged."""
        h = self.decoder(self.post_quant_conv(self._prepare(z)), cancel, mid_attention)
        return h.to(z.dtype).contiguous()
