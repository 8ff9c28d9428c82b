"""The sampler contract: generator functions in sigma space.

Every sampler follows k-diffusion's contract (Karras et al., 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models"): the state `x` lives in the
variance-exploding parameterisation x = x0 + sigma * eps, and `model(x, sigma_batch,
**extra_args)` returns the denoised estimate D(x, sigma). A schedule is a decreasing
list of sigmas, usually ending in 0.

Unlike k-diffusion, a sampler here is a *generator*: it yields one `SamplerStep` after
every step and returns the final `x` (docs/design.md, "Generation is a generator"). The consumer
gets progress and previews from the events and interrupts or skips by simply not asking for
the next one (`generator.close()`); samplers hold no resources, so there is nothing to
clean up. `run_sampler` drains a generator when only the result matters.

Every random draw inside a sampler goes through a `NoiseSampler`, so the caller decides
where randomness comes from (see `noise.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplerStep:
    """One finished step: `x` after the update, `denoised` the step's D(x, sigma)."""

    index: int
    total: int
    x: Tensor
    denoised: Tensor
    sigma: float
    sigma_next: float


SamplerGen = Generator[SamplerStep, None, Tensor]


class Model(Protocol):
    """A denoiser D(x, sigma): `sigma` holds one sigma per batch entry."""

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor: ...


NoiseSampler = Callable[[float, float], Tensor]


def run_sampler(gen: SamplerGen) -> Tensor:
    """Run a sampler generator to the end and return its final `x`."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def denoise(model: Model, x: Tensor, sigma: float, extra_args: dict[str, Any] | None) -> Tensor:
    """Call the model at one scalar sigma, broadcast to the batch (float32 sigmas)."""
    sigma_batch = torch.full((x.shape[0],), sigma, dtype=torch.float32, device=x.device)
    return model(x, sigma_batch, **(extra_args or {}))


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The probability-flow ODE derivative dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float = 1.0) -> tuple[float, float]:
    """Split a step into a deterministic part down to `sigma_down` and fresh noise `sigma_up`.

    sigma_up^2 = eta^2 * sigma_next^2 * (sigma^2 - sigma_next^2) / sigma^2 (capped at
    sigma_next), sigma_down^2 = sigma_next^2 - sigma_up^2: with eta = 1 this is DDPM's
    ancestral step (Ho et al., 2020), with eta = 0 the deterministic ODE step.
    """
    if not eta or sigma_next == 0:
        return sigma_next, 0.0
    up = eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    sigma_up = min(sigma_next, up)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """Karras et al.'s stochastic churn factor gamma for one step (Algorithm 2)."""
    if s_churn <= 0 or not s_tmin <= sigma <= s_tmax:
        return 0.0
    return min(s_churn / steps, 2**0.5 - 1)


def add_churn(x: Tensor, sigma: float, gamma: float, s_noise: float,
              noise_sampler: NoiseSampler | None, sigma_next: float) -> tuple[Tensor, float]:
    """Raise the noise level from sigma to sigma_hat = sigma * (1 + gamma)."""
    sigma_hat = sigma * (gamma + 1)
    if gamma > 0:
        noise = require_noise(noise_sampler, x)(sigma, sigma_next) * s_noise
        x = x + noise * math.sqrt(sigma_hat**2 - sigma**2)
    return x, sigma_hat


def require_noise(noise_sampler: NoiseSampler | None, x: Tensor) -> NoiseSampler:
    """The given noise sampler, or one drawing from torch's global generator."""
    if noise_sampler is not None:
        return noise_sampler
    return lambda sigma, sigma_next: torch.randn_like(x)


def schedule_list(sigmas: Tensor | list[float]) -> list[float]:
    """Sigmas as Python floats (float64 arithmetic for the step coefficients)."""
    if isinstance(sigmas, Tensor):
        return [float(s) for s in sigmas.detach().cpu().tolist()]
    return [float(s) for s in sigmas]
