"""Training a small add-on (ControlNet, T2I-Adapter, ...) on a frozen checkpoint.

The demo's add-ons all train the same way: the checkpoint's U-Net, VAE and text encoder
are loaded and frozen, the add-on alone learns through a Min-SNR-weighted eps-prediction
loss on rows drawn from an encoded training set, and its exponential moving average is
what ships. What differs is the add-on and how its loss calls the U-Net; this module
holds the rest, so that every add-on's random draws come in the same order from its seed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from modules.models.loader import inspect_checkpoint
from modules.training.evaluate import load_model
from modules.training.loop import EMA, Trainer


@dataclass(frozen=True)
class FrozenBase:
    """A checkpoint's parts, loaded with gradients off."""

    family: Any
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module


def load_frozen(base: str | os.PathLike[str]) -> FrozenBase:
    """The checkpoint at `base`, every part frozen."""
    _, family = inspect_checkpoint(base)
    model = load_model(base)
    parts = FrozenBase(family=family, unet=model.model.diffusion_model,
                       vae=model.first_stage_model,
                       text_encoder=model.text_encoders[family.text_encoders[0].name])
    for frozen in (parts.unet, parts.vae, parts.text_encoder):
        frozen.requires_grad_(False)
    return parts


def min_snr_mse(prediction: torch.Tensor, eps: torch.Tensor, abar: torch.Tensor,
                gamma: float) -> torch.Tensor:
    """Eps-prediction MSE per sample, Min-SNR-gamma weighted (Hang et al., 2023): nearly
    clean timesteps stop dominating the gradient."""
    per_sample = (prediction - eps).pow(2).mean(dim=(1, 2, 3))
    snr = abar.flatten() / (1 - abar.flatten())
    return (per_sample * snr.clamp(max=gamma) / snr).mean()


def train_rows(module: torch.nn.Module, loss: Callable[[torch.Tensor, torch.Generator],
                                                      torch.Tensor], *,
               steps: int, batch_size: int, dataset_size: int, learning_rate: float,
               ema_decay: float, seed: int, desc: str, progress: bool) -> list[float]:
    """Train `module` for `steps` steps of `loss(rows, generator)` on random batches of row
    indices; at the end its weights are their moving average. Returns the losses.

    The generator is seeded from `seed` + 2 (the module's own initialisation is the
    caller's, from `seed`), and draws each batch's rows before the loss draws its noise."""
    trainer = Trainer(parameters=module.parameters(), learning_rate=learning_rate,
                      total_steps=steps, warmup_steps=min(100, steps // 10 + 1))
    ema = EMA(modules=[module], decay=ema_decay)
    generator = torch.Generator().manual_seed(seed + 2)
    losses: list[float] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=2.0)
    for _ in bar:
        rows = torch.randint(dataset_size, (batch_size,), generator=generator)
        losses.append(trainer.step(loss(rows, generator)))
        ema.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}", refresh=False)
    ema.copy_to_modules()
    return losses
