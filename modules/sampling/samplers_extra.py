"""Restart sampling and the LCM sampler.

Restart (Xu et al., 2023, "Restart Sampling for Improving Generative Processes"):
follow the ODE with Heun steps, and at a chosen low noise level jump back up by adding
fresh noise (sigma_max^2 - sigma_min^2 of it) and integrate the interval again; the
added noise contracts the accumulated error while the ODE keeps the discretisation
error small. A1111's default plan: with 20+ steps, one restart of 9 steps (two of
steps // 4 from 36 steps on) in [sigma ~ 0.1, sigma ~ 2], the main schedule rebuilt
as Karras over the remaining budget; fewer steps run as plain Heun.

LCM (Luo et al., 2023, "Latent Consistency Models"): each step jumps to the
consistency model's x0 and re-noises to the next sigma.

With `flow=True` (rectified-flow models) the noise is added on the flow path
(`renoise.py`).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from modules.sampling.base import (
    Model,
    NoiseSampler,
    SamplerGen,
    SamplerStep,
    denoise,
    require_noise,
    schedule_list,
    to_d,
)
from modules.sampling.renoise import raise_noise
from modules.sampling.schedules import karras

RestartPlan = dict[float, tuple[int, int, float]]  # at sigma ~ key: (steps + 1, times, sigma_max)


def restart_segments(sigmas: list[float], restart_list: RestartPlan | None, *,
                     flow: bool = False) -> list[tuple[float, float]]:
    """The (sigma, sigma_next) pairs the restart sampler walks, restarts included.

    A flow model's default plan is A1111's at the same signal-to-noise ratios: VE sigma s
    is flow sigma s / (1 + s), so [0.1, 2] becomes [0.0909, 0.667]."""
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
            sigmas = karras(steps - restart_steps * restart_times, sigmas[-2], sigmas[0]).tolist()
            low, high = (0.1 / 1.1, 2.0 / 3.0) if flow else (0.1, 2.0)
            restart_list = {low: (restart_steps + 1, restart_times, high)}
    # Map each restart's sigma to the nearest schedule index.
    def nearest(value: float) -> int:
        return min(range(len(sigmas)), key=lambda k: (abs(sigmas[k] - value), k))

    plan = {nearest(key): value for key, value in restart_list.items()}
    pairs: list[tuple[float, float]] = []
    for i in range(len(sigmas) - 1):
        pairs.append((sigmas[i], sigmas[i + 1]))
        if i + 1 not in plan:
            continue
        restart_steps, restart_times, restart_max = plan[i + 1]
        min_idx, max_idx = i + 1, nearest(restart_max)
        if max_idx < min_idx:
            # Karras sigmas from the restart top down to the restart point, without the 0.
            segment = karras(restart_steps, sigmas[min_idx], sigmas[max_idx]).tolist()[:-1]
            pairs.extend(list(zip(segment[:-1], segment[1:])) * restart_times)
    return pairs


def sample_restart(model: Model, x: Tensor, sigmas: Tensor,
                   extra_args: dict[str, Any] | None = None, *,
                   noise_sampler: NoiseSampler | None = None, s_noise: float = 1.0,
                   restart_list: RestartPlan | None = None, flow: bool = False) -> SamplerGen:
    """Heun steps along the schedule, with noise re-injected at every restart."""
    pairs = restart_segments(schedule_list(sigmas), restart_list, flow=flow)
    noise = require_noise(noise_sampler, x)
    last_sigma: float | None = None
    for i, (sigma, sigma_next) in enumerate(pairs):
        # A jump up in sigma: add the missing noise variance.
        if last_sigma is not None and last_sigma < sigma and flow:
            step = raise_noise(last_sigma, sigma, flow=True)
            x = step.add_noise(x, noise(last_sigma, sigma), s_noise)
        elif last_sigma is not None and last_sigma < sigma:
            x = x + noise(last_sigma, sigma) * s_noise * math.sqrt(sigma**2 - last_sigma**2)
        denoised = denoise(model, x, sigma, extra_args)
        d = to_d(x, sigma, denoised)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
        else:
            x_2 = x + d * (sigma_next - sigma)
            d_2 = to_d(x_2, sigma_next, denoise(model, x_2, sigma_next, extra_args))
            x = x + (d + d_2) / 2 * (sigma_next - sigma)
        last_sigma = sigma_next
        yield SamplerStep(i, len(pairs), x, denoised, sigma, sigma_next)
    return x


def sample_lcm(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None, *,
               noise_sampler: NoiseSampler | None = None, flow: bool = False) -> SamplerGen:
    """Latent consistency sampling: x <- D(x, sigma) + sigma_next * fresh noise
    (flow models: (1 - sigma_next) * D + sigma_next * fresh noise)."""
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        x = denoised
        if sig[i + 1] > 0 and flow:
            x = raise_noise(0.0, sig[i + 1], flow=True).add_noise(x, noise(sig[i], sig[i + 1]))
        elif sig[i + 1] > 0:
            x = x + sig[i + 1] * noise(sig[i], sig[i + 1])
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x

