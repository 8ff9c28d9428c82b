"""What textual inversion and LoRA training share: latents, prompts, the loss, the step loop.

Both teach a frozen Stable Diffusion model a new concept through Stable Diffusion's own
objective (Ho et al., 2020; Rombach et al., 2022): noise a latent x0 to a uniformly
drawn step t of the model's scaled-linear schedule, x_t = sqrt(abar_t) x0 +
sqrt(1 - abar_t) eps, and regress the U-Net's output on eps. Only the small set of new
parameters (embedding vectors, or LoRA factors) gets gradients.

Prompts are encoded exactly as at generation time (`modules/conditioning`: the same
chunking and the same splicing of embedding vectors), so what is learned sits where
the generation pipeline will put it.

`optimise` is the step loop. It is a generator: one `TrainingStep` per optimiser step,
and the consumer may answer "interrupt" (the job queue's command) to stop early.
"""

from __future__ import annotations

import argparse
import math
import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from modules.conditioning.chunking import SpecialIds
from modules.conditioning.embeddings import EmbeddingTable
from modules.conditioning.encode import chunk_texts, encode_chunks
from modules.conditioning.tokenizer import ClipTokenizer
from modules.errors import ParamsError
from modules.models.sd_model import StableDiffusionModel
from modules.sampling.denoiser import scaled_linear_alphas_cumprod
from modules.training.concept_data import DEFAULT_MODEL, ConceptItem
from modules.training.lr_schedule import LearnRateSchedule, parse_learn_rate
from modules.training.train_vae import encode_latents

LATENT_SAMPLING_METHODS = ("once", "deterministic", "random")
CLIP_GRAD_MODES = ("disabled", "value", "norm")
MAX_BATCH = 1024
MAX_STEPS = 10_000_000
UNetCall = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class TrainingStep:
    """One optimiser step: its number (1-based), the total, the mean loss, the rate used."""

    step: int
    total: int
    loss: float
    learn_rate: float


class LatentCache:
    """The training images encoded once; latents drawn by A1111's three methods.

    once: one posterior sample per image, drawn at the start; deterministic: the
    posterior mean; random: a new posterior sample every time an image is used.
    """

    def __init__(self, model: StableDiffusionModel, items: Sequence[ConceptItem], *, method: str,
                 generator: torch.Generator) -> None:
        if method not in LATENT_SAMPLING_METHODS:
            raise ParamsError("latent_sampling_method",
                              f"{method!r} is not one of {', '.join(LATENT_SAMPLING_METHODS)}")
        means, stds = encode_latents(model.vae, np.stack([item.image for item in items]))
        self.means, self.stds = means, stds
        self.method = method
        self.scale = model.family.vae.scale_factor
        self.shift = model.family.vae.shift_factor
        if method == "once":
            self.fixed = means + stds * torch.randn(means.shape, generator=generator)
        elif method == "deterministic":
            self.fixed = means
        else:
            self.fixed = None

    def latents(self, rows: Sequence[int], generator: torch.Generator) -> torch.Tensor:
        """Scaled latents (len(rows), C, h, w), as the U-Net saw them in training."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        if self.fixed is not None:
            raw = self.fixed[index]
        else:
            noise = torch.randn(self.means[index].shape, generator=generator)
            raw = self.means[index] + self.stds[index] * noise
        return (raw - self.shift) * self.scale


class Batches:
    """Item indices in seeded, shuffled epochs, `batch_size` at a time (A1111's order)."""

    def __init__(self, count: int, *, batch_size: int, seed: int) -> None:
        self.count, self.batch_size = count, batch_size
        self.rng = random.Random(seed)
        self.queue: list[int] = []

    def next(self) -> list[int]:
        while len(self.queue) < self.batch_size:
            epoch = list(range(self.count))
            self.rng.shuffle(epoch)
            self.queue += epoch
        rows, self.queue = self.queue[:self.batch_size], self.queue[self.batch_size:]
        return rows


def encode_prompts(model: StableDiffusionModel, tokenizer: ClipTokenizer, prompts: Sequence[str], *,
                   embeddings: EmbeddingTable | None = None,
                   text_encoder: Callable | None = None) -> torch.Tensor:
    """(B, 77 * chunks, C) context, with gradients, by the generation pipeline's rules.

    :param text_encoder: a stand-in for the model's encoder (a LoRA-patched call)
    """
    spec = model.family.text_encoders[0]
    encoder = model.text_encoders[spec.name]
    chunked = chunk_texts(prompts, tokenizer=tokenizer, emphasis="Original", comma_backtrack=20,
                          embeddings=embeddings, encoder_name=spec.name)
    ids = SpecialIds(tokenizer.bos_id, tokenizer.eos_id, tokenizer.comma_id)
    return encode_chunks(text_encoder or encoder, [chunks for chunks, _ in chunked], ids=ids,
                         emphasis="Original", clip_skip=None).hidden


def noise_prediction_loss(unet: UNetCall, latents: torch.Tensor, context: torch.Tensor, *,
                          alphas_cumprod: torch.Tensor, generator: torch.Generator,
                          min_snr_gamma: float | None = None) -> torch.Tensor:
    """Eps-prediction MSE at uniformly drawn timesteps (optionally Min-SNR-gamma weighted)."""
    timesteps = torch.randint(len(alphas_cumprod), (latents.shape[0],), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    abar = alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * noise
    per_sample = (unet(noisy, timesteps, context) - noise).pow(2).mean(dim=(1, 2, 3))
    if min_snr_gamma is None:
        return per_sample.mean()
    # Min-SNR-gamma (Hang et al., 2023): nearly clean steps stop dominating the gradient.
    snr = abar.flatten() / (1 - abar.flatten())
    return (per_sample * snr.clamp(max=min_snr_gamma) / snr).mean()


def training_alphas(model: StableDiffusionModel) -> torch.Tensor:
    return scaled_linear_alphas_cumprod(model.family.schedule)


@dataclass(frozen=True, kw_only=True)
class StepLoop:
    """How the optimiser steps: rates, accumulation, clipping."""

    schedule: LearnRateSchedule
    total_steps: int
    gradient_step: int = 1
    clip_grad_mode: str = "disabled"
    clip_grad_value: float = 0.1
    weight_decay: float = 0.0


def optimise(parameters: Sequence[nn.Parameter], loop: StepLoop,
             micro_loss: Callable[[], torch.Tensor],
             *, start_step: int = 0) -> Generator[TrainingStep, str | None, int]:
    """AdamW over `parameters`; yields after each step; returns the steps taken.

    Each optimiser step accumulates `gradient_step` micro-batches (`micro_loss()` each),
    so the effective batch is batch_size x gradient_step, as in A1111.
    """
    optimizer = torch.optim.AdamW(parameters, lr=loop.schedule.rate_at(start_step),
                                  weight_decay=loop.weight_decay)
    step = start_step
    while step < loop.total_steps:
        rate = loop.schedule.rate_at(step)
        for group in optimizer.param_groups:
            group["lr"] = rate
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(loop.gradient_step):
            loss = micro_loss() / loop.gradient_step
            loss.backward()
            total += float(loss.detach())
        if not math.isfinite(total):
            raise FloatingPointError(f"the loss became {total} at step {step + 1}; "
                                     "lower the learn rate")
        _clip(parameters, loop)
        optimizer.step()
        step += 1
        if (yield TrainingStep(step, loop.total_steps, total, rate)) == "interrupt":
            break
    return step


def with_checkpoints(steps: Generator[TrainingStep, str | None, int], *, losses: list[float],
                     save_every: int = 0, save: Callable[[int], object] | None = None,
                     preview_every: int = 0, preview: Callable[[int], object] | None = None,
                     ) -> Generator[TrainingStep, str | None, int]:
    """Relay `optimise`'s steps (and the consumer's commands), recording losses and
    calling `save(step)` / `preview(step)` every N steps; returns the last step."""
    command = None
    try:
        while True:
            event = steps.send(command)
            losses.append(event.loss)
            if save is not None and save_every and event.step % save_every == 0:
                save(event.step)
            if preview is not None and preview_every and event.step % preview_every == 0:
                preview(event.step)
            command = yield event
    except StopIteration as stop:
        return stop.value


def _clip(parameters: Sequence[nn.Parameter], loop: StepLoop) -> None:
    if loop.clip_grad_mode == "value":
        torch.nn.utils.clip_grad_value_(parameters, loop.clip_grad_value)
    elif loop.clip_grad_mode == "norm":
        torch.nn.utils.clip_grad_norm_(parameters, loop.clip_grad_value)


@dataclass(frozen=True, kw_only=True)
class ConceptTrainingOptions:
    """The options embedding and LoRA training share (A1111's train-tab names)."""

    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    steps: int = 1000
    save_every: int = 0  # A1111: save_embedding_every; 0: never
    preview_every: int = 0  # A1111: create_image_every; 0: never
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: str = "once"
    clip_grad_mode: str = "disabled"
    clip_grad_value: float = 0.1
    min_snr_gamma: float | None = None  # not in A1111; None: plain MSE as A1111
    seed: int = 0

    def validate(self) -> LearnRateSchedule:
        """Check every shared field; returns the parsed learn-rate schedule."""
        check_common(batch_size=self.batch_size, gradient_step=self.gradient_step, steps=self.steps,
                     save_every=self.save_every, preview_every=self.preview_every,
                     tag_drop_out=self.tag_drop_out, clip_grad_mode=self.clip_grad_mode,
                     clip_grad_value=self.clip_grad_value,
                     latent_sampling_method=self.latent_sampling_method, seed=self.seed)
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise ParamsError("min_snr_gamma",
                              f"must be positive or unset, got {self.min_snr_gamma}")
        return parse_learn_rate(self.learn_rate)


def check_common(*, batch_size: int, gradient_step: int, steps: int, save_every: int,
                 preview_every: int,
                 tag_drop_out: float, clip_grad_mode: str, clip_grad_value: float,
                 latent_sampling_method: str, seed: int = 0) -> None:
    """Validate the options both trainers share; errors name A1111's field names."""
    whole_numbers = (("batch_size", batch_size, 1, MAX_BATCH),
                     ("gradient_step", gradient_step, 1, 1000), ("steps", steps, 1, MAX_STEPS),
                     ("save_embedding_every", save_every, 0, MAX_STEPS),
                     ("create_image_every", preview_every, 0, MAX_STEPS),
                     ("seed", seed, 0, 2**63 - 1))
    for field, value, low, high in whole_numbers:
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ParamsError(field, f"must be a whole number in {low}..{high}, got {value!r}")
    if not 0.0 <= tag_drop_out < 1.0:
        raise ParamsError("tag_drop_out", f"must be in [0, 1), got {tag_drop_out}")
    if clip_grad_mode not in CLIP_GRAD_MODES:
        raise ParamsError("clip_grad_mode",
                          f"{clip_grad_mode!r} is not one of {', '.join(CLIP_GRAD_MODES)}")
    if not (math.isfinite(clip_grad_value) and clip_grad_value > 0):
        raise ParamsError("clip_grad_value", f"must be a positive number, got {clip_grad_value}")
    if latent_sampling_method not in LATENT_SAMPLING_METHODS:
        raise ParamsError("latent_sampling_method",
                          f"{latent_sampling_method!r} is not one of "
                          f"{', '.join(LATENT_SAMPLING_METHODS)}")


def drive(training: Generator, *, progress: bool = True, desc: str = "training"):
    """Run a training generator to its end with a tqdm bar; returns its result."""
    bar = tqdm(desc=desc, disable=not progress, mininterval=2.0)
    try:
        while True:
            event = next(training)
            bar.total = event.total
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.learn_rate:g}", refresh=False)
    except StopIteration as stop:
        return stop.value
    finally:
        bar.close()


def concept_parser(description: str, *, defaults: ConceptTrainingOptions, out: Path,
                   out_help: str) -> argparse.ArgumentParser:
    """The command-line arguments both trainers share: the data (the demo's held-out bar or
    a dataset folder), template, model, output file, schedule, seed and threads."""
    parser = argparse.ArgumentParser(description=description)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bar", action="store_true", help="train the held-out bar of the demo set")
    source.add_argument("--data-root", type=Path,
                        help="a folder of images (captions in <stem>.txt)")
    parser.add_argument("--template", type=Path,
                        help="a prompt template file ([name], [filewords])")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="checkpoint to train against")
    parser.add_argument("--out", type=Path, default=out, help=out_help)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--learn-rate", default=defaults.learn_rate)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads "
                             "(small steps run fastest on one; 0: torch's default)")
    return parser
