"""Training the demo's U-Net and CLIP text encoder together, on VAE latents of the shapes set.

The objective is Stable Diffusion's (Ho et al., 2020; Rombach et al., 2022): noise a
latent x0 to step t of the scaled-linear DDPM schedule,
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, and regress the U-Net's output on eps.
Two additions make a one-hour CPU run learn:

* Min-SNR-gamma loss weights (Hang et al., 2023, https://arxiv.org/abs/2303.09556):
  for eps-prediction, weight min(SNR_t, gamma) / SNR_t, so the many nearly clean steps
  do not dominate the gradient; the layout of the picture is decided at high noise.
* Caption dropout: 10% of captions are replaced by the empty prompt, which trains the
  unconditional prediction that classifier-free guidance (Ho & Salimans, 2022) needs.

The text encoder is trained from scratch through the same loss. A batch holds a few
images per caption (`repeats`), so the text encoder runs once for several U-Net samples.
Latents are encoded once, before training, as posterior mean and std; each step draws a
fresh posterior sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from modules.conditioning.tokenizer import ClipTokenizer
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.configs import NoiseScheduleConfig
from modules.nn.text_encoders import TextEncoder
from modules.nn.unet import UNetModel
from modules.sampling.denoiser import scaled_linear_alphas_cumprod
from modules.training.captions import token_ids
from modules.training.loop import EMA, Trainer
from modules.training.shapes import make_caption_group
from modules.training.train_vae import encode_latents


@dataclass(frozen=True, kw_only=True)
class UNetTrainingConfig:
    """How long and how hard to train the U-Net and the text encoder."""

    steps: int = 2000
    groups_per_batch: int = 16
    repeats: int = 4
    dataset_groups: int = 3000
    learning_rate: float = 1e-3
    caption_dropout: float = 0.1
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.995
    resolution: int = 64
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class LatentSet:
    """Encoded training set: latents of `groups x repeats` images, one caption per group."""

    means: torch.Tensor  # (groups * repeats, C, h, w), unscaled
    stds: torch.Tensor
    token_ids: torch.Tensor  # (groups, 77)
    repeats: int

    @property
    def groups(self) -> int:
        return self.token_ids.shape[0]


def build_latent_set(*, vae: AutoencoderKL, tokenizer: ClipTokenizer, groups: int, repeats: int,
                     seed: int, resolution: int, progress: bool = False) -> LatentSet:
    """Generate `groups` captions with `repeats` images each and encode them."""
    images, captions = [], []
    for group in range(groups):
        group_images, caption = make_caption_group(seed, group, repeats, resolution=resolution)
        images.append(group_images)
        captions.append(caption)
    means, stds = encode_latents(vae, np.concatenate(images), progress=progress)
    return LatentSet(means=means, stds=stds, token_ids=token_ids(tokenizer, captions),
                     repeats=repeats)


def draw_batch(data: LatentSet, *, groups: int, scale_factor: float, empty_ids: torch.Tensor,
               caption_dropout: float,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled latent samples (groups * repeats, C, h, w) and token ids (groups, 77)."""
    chosen = torch.randint(data.groups, (groups,), generator=generator)
    rows = (chosen[:, None] * data.repeats + torch.arange(data.repeats)).flatten()
    noise = torch.randn(data.means[rows].shape, generator=generator)
    latents = scale_factor * (data.means[rows] + data.stds[rows] * noise)
    ids = data.token_ids[chosen].clone()
    # Caption dropout: these groups learn the unconditional (empty prompt) prediction.
    dropped = torch.rand(groups, generator=generator) < caption_dropout
    ids[dropped] = empty_ids
    return latents, ids


def diffusion_loss(unet: UNetModel, text_encoder: TextEncoder, latents: torch.Tensor,
                   ids: torch.Tensor, *, alphas_cumprod: torch.Tensor, generator: torch.Generator,
                   min_snr_gamma: float | None) -> torch.Tensor:
    """Min-SNR-weighted eps-prediction MSE; each caption in `ids` covers len(latents) / len(ids)
    latents."""
    context = text_encoder(ids).hidden.repeat_interleave(latents.shape[0] // ids.shape[0], dim=0)
    timesteps = torch.randint(len(alphas_cumprod), (latents.shape[0],), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    prediction = unet(noisy, timesteps, context)
    per_sample = (prediction - noise).pow(2).mean(dim=(1, 2, 3))
    if min_snr_gamma is None:
        return per_sample.mean()
    snr = abar.flatten() / (1 - abar.flatten())
    return (per_sample * snr.clamp(max=min_snr_gamma) / snr).mean()


def train_unet(*, unet: UNetModel, text_encoder: TextEncoder, data: LatentSet, scale_factor: float,
               schedule: NoiseScheduleConfig, training: UNetTrainingConfig, empty_ids: torch.Tensor,
               progress: bool = True, snapshot: Callable[[int, EMA], None] | None = None,
               snapshot_every: int = 0) -> list[float]:
    """Train both networks in place (ending with their EMA weights); returns the losses.

    `snapshot(step, ema)` is called every `snapshot_every` steps, e.g. to save and
    evaluate the averaged weights while training goes on.
    """
    torch.manual_seed(training.seed)
    unet.train()
    text_encoder.train()
    modules = [unet, text_encoder]
    trainer = Trainer(parameters=[p for m in modules for p in m.parameters()],
                      learning_rate=training.learning_rate, total_steps=training.steps,
                      warmup_steps=min(100, training.steps // 10 + 1))
    ema = EMA(modules=modules, decay=training.ema_decay)
    alphas_cumprod = scaled_linear_alphas_cumprod(schedule)
    generator = torch.Generator().manual_seed(training.seed + 2)
    losses = []
    bar = tqdm(range(training.steps), desc="unet+text", disable=not progress, mininterval=2.0)
    for step in bar:
        latents, ids = draw_batch(data, groups=training.groups_per_batch, scale_factor=scale_factor,
                                  empty_ids=empty_ids, caption_dropout=training.caption_dropout,
                                  generator=generator)
        loss = diffusion_loss(unet, text_encoder, latents, ids, alphas_cumprod=alphas_cumprod,
                              generator=generator, min_snr_gamma=training.min_snr_gamma)
        losses.append(trainer.step(loss))
        ema.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
        if snapshot is not None and snapshot_every and (step + 1) % snapshot_every == 0:
            snapshot(step + 1, ema)
    ema.copy_to_modules()
    unet.eval()
    text_encoder.eval()
    return losses
