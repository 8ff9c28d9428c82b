"""Training the demo's KL autoencoder on the shapes set.

As in Latent Diffusion (Rombach et al., 2022, sec. 3.1) the autoencoder is trained
alone, first: a reconstruction loss on a sample of the posterior plus a very small KL
term towards N(0, I), which keeps the latent space smooth without blurring it. LDM adds
a perceptual (LPIPS) and a patch-GAN loss for natural images; flat shapes on flat
backgrounds are reconstructed sharply enough by L1 alone, so we leave both out.

The latent scale factor (`VAEConfig.scale_factor`, 0.18215 for SD1) is then measured as
1 / std of the latents, which gives the diffusion model unit-variance inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from modules.nn.autoencoder import AutoencoderKL
from modules.nn.configs import VAEConfig
from modules.training.loop import Trainer
from modules.training.shapes import make_batch


@dataclass(frozen=True, kw_only=True)
class VAETrainingConfig:
    """How long and how hard to train the autoencoder."""

    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 1e-3
    kl_weight: float = 1e-4
    resolution: int = 64
    seed: int = 0


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def vae_loss(vae: AutoencoderKL, images: torch.Tensor, *, generator: torch.Generator,
             kl_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean L1 reconstruction of a posterior sample + `kl_weight` x mean KL to N(0, I)."""
    posterior = vae.encode(images)
    noise = torch.randn(posterior.mean.shape, generator=generator)
    reconstruction = vae.decode(posterior.sample(noise))
    l1 = (reconstruction - images).abs().mean()
    # KL(N(mu, sigma^2) || N(0, 1)) per latent element, averaged.
    kl = 0.5 * (posterior.mean.pow(2) + posterior.logvar.exp() - 1 - posterior.logvar).mean()
    return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}


def train_vae(*, model_config: VAEConfig, training: VAETrainingConfig, progress: bool = True,
              vae: AutoencoderKL | None = None) -> AutoencoderKL:
    """Train (a fresh, seeded or the given) autoencoder on freshly generated shapes."""
    torch.manual_seed(training.seed)
    vae = vae if vae is not None else AutoencoderKL(config=model_config)
    vae.train()
    trainer = Trainer(parameters=vae.parameters(), learning_rate=training.learning_rate,
                      total_steps=training.steps, warmup_steps=min(50, training.steps // 10 + 1))
    generator = torch.Generator().manual_seed(training.seed)
    bar = tqdm(range(training.steps), desc="vae", disable=not progress, mininterval=2.0)
    for step in bar:
        # Each step sees new images: the set is generated, never exhausted.
        images, _ = make_batch(training.seed + 1, step * training.batch_size, training.batch_size,
                               resolution=training.resolution)
        loss, parts = vae_loss(vae, images_to_tensor(images), generator=generator,
                               kl_weight=training.kl_weight)
        trainer.step(loss)
        bar.set_postfix(l1=f"{parts['l1']:.4f}", kl=f"{parts['kl']:.1f}", refresh=False)
    return vae.eval()


@dataclass(frozen=True, kw_only=True)
class DecoderTrainingConfig:
    """Second VAE stage: the decoder alone, on latents of the now frozen encoder."""

    steps: int = 1500
    batch_size: int = 16
    learning_rate: float = 5e-4
    resolution: int = 64
    seed: int = 0


def finetune_decoder(vae: AutoencoderKL, *, training: DecoderTrainingConfig,
                     progress: bool = True) -> AutoencoderKL:
    """Sharpen the decoder with the encoder frozen, as SD's ft-MSE decoders were made.

    The latent space does not move, so a U-Net trained on this encoder's latents (even
    at the same time, in another process) stays valid; only the pixels get crisper.
    """
    decoder_parameters = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    trainer = Trainer(parameters=decoder_parameters, learning_rate=training.learning_rate,
                      total_steps=training.steps, warmup_steps=min(50, training.steps // 10 + 1))
    generator = torch.Generator().manual_seed(training.seed + 10)
    vae.eval()
    bar = tqdm(range(training.steps), desc="vae decoder", disable=not progress, mininterval=2.0)
    for step in bar:
        images, _ = make_batch(training.seed + 11, step * training.batch_size, training.batch_size,
                               resolution=training.resolution)
        target = images_to_tensor(images)
        # Posterior samples from the frozen encoder, then only the decoder gets gradients.
        with torch.no_grad():
            posterior = vae.encode(target)
            latents = posterior.sample(torch.randn(posterior.mean.shape, generator=generator))
        loss = (vae.decode(latents) - target).abs().mean()
        trainer.step(loss)
        bar.set_postfix(l1=f"{float(loss.detach()):.4f}", refresh=False)
    return vae


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: np.ndarray, *, batch_size: int = 64,
                   progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std (unscaled) of every image, computed in batches."""
    means, stds = [], []
    for start in tqdm(range(0, len(images), batch_size), desc="encode", disable=not progress,
                      mininterval=2.0):
        posterior = vae.encode(images_to_tensor(images[start:start + batch_size]))
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def measure_scale_factor(means: torch.Tensor, stds: torch.Tensor) -> float:
    """1 / std of posterior samples, so that scaled latents have unit variance."""
    variance = means.var() + stds.pow(2).mean()
    return float(1.0 / variance.sqrt())
