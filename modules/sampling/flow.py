"""Rectified-flow sampling: shifted sigma tables, their schedules, and the denoiser.

Rectified flow (Liu et al., 2022; Esser et al., 2024, "Scaling Rectified Flow
Transformers", https://arxiv.org/abs/2403.03206) trains on the straight path
x_sigma = (1 - sigma) * x0 + sigma * noise, sigma in [0, 1], and the network predicts the
velocity v = noise - x0. So x0 = x - sigma * v, which is the denoiser D(x, sigma) the
k-diffusion samplers integrate: Euler's slope (x - D) / sigma is exactly v, and an Euler
step x + (sigma_next - sigma) * v is the flow-matching Euler step of diffusers'
`FlowMatchEulerDiscreteScheduler`. Unlike the variance-exploding view of SD1/SDXL, the
sampler's x is the network's input as is (no 1 / sqrt(sigma^2 + 1)), and sampling starts
from x = noise at sigma = 1; img2img starts from (1 - sigma) * init + sigma * noise.

Shifts (SD3 paper, sec. 5.3.2): the uniform training times t = k / N are moved toward
noise, either by a fixed s, sigma = s t / (1 + (s - 1) t) (SD3: s = 3), or (Flux.1 dev) by
sigma = e^mu / (e^mu + 1/t - 1) with mu linear in the number of image tokens
(0.5 at 256, 1.15 at 4096). `FlowSchedule.table()` is the model's ascending sigma table
(index k - 1 for t = k / N), the table A1111's schedule types work on:

- Simple: every N/n-th table entry from the top ("Automatic" for samplers without a
  default scheduler of their own);
- Normal / SGM Uniform: uniform in the model's timestep N * sigma between the table's
  ends, mapped through the shift (SGM: n + 1 points, the last dropped);
- Karras, Beta, Exponential, ...: the SD1 formulas between the table's sigma_min and 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from modules.nn.configs import FlowConfig
from modules.sampling.denoiser import SigmaTable

FlowModel = Callable[..., Tensor]  # model(x, timestep, context=..., y=..., **kw) -> velocity


def time_snr_shift(shift: float, t: Tensor) -> Tensor:
    """SD3's fixed shift: s t / (1 + (s - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


def exponential_time_shift(mu: float, t: Tensor) -> Tensor:
    """Flux.1's resolution shift: e^mu / (e^mu + (1/t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))


def image_seq_len(width: int, height: int, *, downscale: int = 8, patch: int = 2) -> int:
    """Image tokens of a (width x height) picture: latent 2x2 patches (VAE factor 8)."""
    step = downscale * patch
    return (height // step) * (width // step)


def resolution_mu(seq_len: int, config: FlowConfig) -> float:
    """mu linear in the token count through (base_len, base_shift) and (max_len, max_shift)."""
    slope = (config.max_shift - config.base_shift) / (
        config.max_image_seq_len - config.base_image_seq_len)
    return config.base_shift + slope * (seq_len - config.base_image_seq_len)


@dataclass(frozen=True)
class FlowSchedule:
    """One flow model's sigma shift at one resolution: a fixed `shift`, or Flux's `mu`."""

    shift: float = 1.0
    mu: float | None = None
    num_timesteps: int = 1000

    def apply(self, t: Tensor) -> Tensor:
        """Shifted sigmas of unshifted times t in (0, 1] (float64 in, float64 out)."""
        if self.mu is not None:
            return exponential_time_shift(self.mu, t)
        return time_snr_shift(self.shift, t)

    def table(self) -> Tensor:
        """The model's ascending sigma table: sigma(k / N) for k = 1 .. N, float32."""
        n = self.num_timesteps
        return self.apply(torch.arange(1, n + 1, dtype=torch.float64) / n).float()


def flow_schedule(config: FlowConfig, width: int = 1024, height: int = 1024) -> FlowSchedule:
    """The schedule of a model with `config` for images of `width` x `height` pixels."""
    mu = resolution_mu(image_seq_len(width, height), config) if config.dynamic_shift else None
    return FlowSchedule(shift=config.shift, mu=mu, num_timesteps=config.num_timesteps)


def _with_zero(sigmas: Tensor) -> Tensor:
    sigmas = sigmas.float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def flow_match_sigmas(steps: int, flow: FlowSchedule) -> Tensor:
    """diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps(steps[, mu])` sigmas.

    Times linear from 1 to the table's smallest time, then shifted (SD3's default
    schedule); a final 0 is appended. diffusers' smallest time is the shifted 1/N for a
    fixed shift (so it is shifted twice) and 1/N with a dynamic shift (mu).
    """
    low = 1 / flow.num_timesteps
    if flow.mu is None:
        low = float(flow.apply(torch.tensor(low, dtype=torch.float64)))
    return _with_zero(flow.apply(torch.linspace(1.0, low, steps, dtype=torch.float64)))


def flux_pipeline_sigmas(steps: int, flow: FlowSchedule) -> Tensor:
    """The sigmas diffusers' `FluxPipeline` passes: shift(linspace(1, 1/steps, steps)), 0."""
    return _with_zero(flow.apply(torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)))


def normal(n: int, sigma_min: float, sigma_max: float, flow: FlowSchedule, *,
           sgm: bool = False) -> Tensor:
    """Uniform in the timestep N * sigma from sigma_max to sigma_min, through the shift."""
    points = torch.linspace(sigma_max, sigma_min, n + 1 if sgm else n, dtype=torch.float64)
    return _with_zero(flow.apply(points[:-1] if sgm else points))


def denoiser_output(x: Tensor, sigma: Tensor, velocity: Tensor) -> Tensor:
    """x0 = x - sigma * v, with `sigma` per batch row."""
    return x - sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) * velocity


def noised(init: Tensor, noise: Tensor, sigma: float | Tensor) -> Tensor:
    """The flow path at sigma: (1 - sigma) * init + sigma * noise (img2img's start)."""
    if isinstance(sigma, Tensor):
        sigma = sigma.to(init.dtype).view(-1, *([1] * (init.ndim - 1)))
    return (1 - sigma) * init + sigma * noise


class FlowDenoiser(SigmaTable):
    """D(x, sigma) = x - sigma * v(x, timestep_scale * sigma) for a velocity model.

    Called like `denoiser.Denoiser` (so `cfg.CFGDenoiser` drives it): keyword `context`,
    `y`, `c_concat` (extra input channels) and any model keyword (Flux's `guidance`).
    """

    def __init__(self, model: FlowModel, *, sigmas: Tensor, timestep_scale: float = 1000.0
                 ) -> None:
        """:param sigmas: the model's ascending sigma table (`FlowSchedule.table()`)
        :param timestep_scale: the model's timestep per unit sigma (SD3 1000, Flux 1)"""
        super().__init__(sigmas)
        self.model = model
        self.timestep_scale = timestep_scale
        self.prediction = "flow"
        self.is_flow = True  # samplers add their noise on the flow path (`renoise.py`)

    def timestep(self, sigma: Tensor) -> Tensor:
        """The timestep the network is given for these sigmas."""
        return sigma.float() * self.timestep_scale

    def __call__(self, x: Tensor, sigma: Tensor, *, context: Tensor, y: Tensor | None = None,
                 c_concat: Tensor | None = None, **model_kwargs: Any) -> Tensor:
        x_in = x if c_concat is None else torch.cat([x, c_concat.to(x.dtype)], dim=1)
        velocity = self.model(x_in, self.timestep(sigma), context=context, y=y, **model_kwargs)
        return denoiser_output(x, sigma, velocity.to(x.dtype))
