"""DPM-Solver++ samplers: exponential integrators on the data prediction.

Lu et al. (2022), "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models". With lambda = -log sigma (log-SNR / 2 in sigma space) and
h = lambda_next - lambda, the exact solution of the probability-flow ODE given a
constant D is x_next = (sigma_next / sigma) x - expm1(-h) D; higher orders correct D
with earlier evaluations (multistep "2M", "3M") or a midpoint evaluation ("2S").
The SDE variants (Gonzalez et al. 2023 / Lu et al. 2022, section 5) add eta-weighted
Brownian noise. Algorithms as in k-diffusion's `sampling.py` (MIT), written anew.
With `flow=True` (rectified-flow models) the steps are the same and only the noise is
added on the flow path (`renoise.py`); every SDE step is an ODE step to some sigma_down
followed by noise, so the same rule applies.
"""

from __future__ import annotations

import math
from typing import Any, Literal

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
from modules.sampling.renoise import ancestral, raise_noise


def _lam(sigma: float) -> float:
    """lambda = -log(sigma)."""
    return -math.log(sigma)


def sample_dpmpp_2s_ancestral(model: Model, x: Tensor, sigmas: Tensor,
                              extra_args: dict[str, Any] | None = None, *,
                              noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                              s_noise: float = 1.0, flow: bool = False) -> SamplerGen:
    """DPM-Solver++(2S), single-step second order, as an ancestral sampler."""
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        step = ancestral(sig[i], sig[i + 1], eta, flow=flow)
        sigma_down = step.sigma_down
        if sigma_down == 0:
            x = x + to_d(x, sig[i], denoised) * (sigma_down - sig[i])
        else:
            # Half step to the midpoint in lambda, then the full step with D at the midpoint.
            h = _lam(sigma_down) - _lam(sig[i])
            sigma_mid = math.exp(-(_lam(sig[i]) + h / 2))
            x_2 = (sigma_mid / sig[i]) * x - math.expm1(-h / 2) * denoised
            denoised_2 = denoise(model, x_2, sigma_mid, extra_args)
            x = (sigma_down / sig[i]) * x - math.expm1(-h) * denoised_2
        if sig[i + 1] > 0:
            x = step.add_noise(x, noise(sig[i], sig[i + 1]), s_noise)
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def sample_dpmpp_sde(model: Model, x: Tensor, sigmas: Tensor,
                     extra_args: dict[str, Any] | None = None, *,
                     noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                     s_noise: float = 1.0, r: float = 0.5, flow: bool = False) -> SamplerGen:
    """DPM-Solver++ (stochastic, single-step second order), with an intermediate point at
    ratio r."""
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        if sig[i + 1] == 0:
            x = x + to_d(x, sig[i], denoised) * (sig[i + 1] - sig[i])
        else:
            x = _dpmpp_sde_step(model, x, denoised, sig[i], sig[i + 1], extra_args, noise, eta,
                                s_noise, r, flow)
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def _dpmpp_sde_step(model: Model, x: Tensor, denoised: Tensor, sigma: float, sigma_next: float,
                    extra_args: dict[str, Any] | None, noise: NoiseSampler, eta: float,
                    s_noise: float, r: float, flow: bool) -> Tensor:
    """One DPM++ SDE step: an ancestral half step to sigma_s, then the full step with mixed D."""
    lam, lam_next = _lam(sigma), _lam(sigma_next)
    h = lam_next - lam
    sigma_s = math.exp(-(lam + h * r))
    fac = 1 / (2 * r)
    # Step 1: to the intermediate point, with noise.
    step = ancestral(sigma, sigma_s, eta, flow=flow)
    sd = step.sigma_down
    x_2 = (sd / sigma) * x - math.expm1(lam - _lam(sd)) * denoised
    x_2 = step.add_noise(x_2, noise(sigma, sigma_s), s_noise)
    denoised_2 = denoise(model, x_2, sigma_s, extra_args)
    # Step 2: the full step with a blend of both data predictions, with noise.
    step = ancestral(sigma, sigma_next, eta, flow=flow)
    sd = step.sigma_down
    denoised_d = (1 - fac) * denoised + fac * denoised_2
    x = (sd / sigma) * x - math.expm1(lam - _lam(sd)) * denoised_d
    return step.add_noise(x, noise(sigma, sigma_next), s_noise)


def sample_dpmpp_2m(model: Model, x: Tensor, sigmas: Tensor,
                    extra_args: dict[str, Any] | None = None, *,
                    noise_sampler: NoiseSampler | None = None, flow: bool = False) -> SamplerGen:
    """DPM-Solver++(2M): second-order multistep, first order on the first and last step
    (the same for flow models: no noise is added)."""
    sig = schedule_list(sigmas)
    total = len(sig) - 1
    old_denoised: Tensor | None = None
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sig[i + 1]) - _lam(sig[i])
            denoised_d = denoised
            if old_denoised is not None:
                # Linear extrapolation of D in lambda from the previous step.
                ratio = (_lam(sig[i]) - _lam(sig[i - 1])) / h
                denoised_d = (1 + 1 / (2 * ratio)) * denoised - (1 / (2 * ratio)) * old_denoised
            x = (sig[i + 1] / sig[i]) * x - math.expm1(-h) * denoised_d
        old_denoised = denoised
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def sample_dpmpp_2m_sde(model: Model, x: Tensor, sigmas: Tensor,
                        extra_args: dict[str, Any] | None = None, *,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                        s_noise: float = 1.0,
                        solver_type: Literal["midpoint", "heun"] = "midpoint",
                        flow: bool = False) -> SamplerGen:
    """DPM-Solver++(2M) SDE: multistep second order with eta-weighted noise."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    old_denoised, h_last, h = None, None, None
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sig[i + 1]) - _lam(sig[i])
            eta_h = eta * h
            # First-order exponential step with damped x.
            x = (sig[i + 1] / sig[i]) * math.exp(-eta_h) * x - math.expm1(-h - eta_h) * denoised
            if old_denoised is not None and h_last is not None:
                # Second-order correction from the previous data prediction.
                r = h_last / h
                if solver_type == "heun":
                    coeff = -math.expm1(-h - eta_h) / (-h - eta_h) + 1
                else:
                    coeff = -0.5 * math.expm1(-h - eta_h)
                x = x + coeff * (1 / r) * (denoised - old_denoised)
            if eta and flow:
                x = _flow_sde_noise(x, noise, sig[i], sig[i + 1], eta_h, s_noise)
            elif eta:
                scale = sig[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise
                x = x + noise(sig[i], sig[i + 1]) * scale
        old_denoised, h_last = denoised, h
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def sample_dpmpp_3m_sde(model: Model, x: Tensor, sigmas: Tensor,
                        extra_args: dict[str, Any] | None = None, *,
                        noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                        s_noise: float = 1.0, flow: bool = False) -> SamplerGen:
    """DPM-Solver++(3M) SDE: third-order multistep with eta-weighted noise."""
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    history: list[tuple[Tensor, float]] = []  # (denoised, h) of the last two steps, newest first
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        h = None
        if sig[i + 1] == 0:
            x = denoised
        else:
            h = _lam(sig[i + 1]) - _lam(sig[i])
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            x = x + _dpmpp_3m_correction(denoised, history, h, h_eta)
            if eta and flow:
                x = _flow_sde_noise(x, noise, sig[i], sig[i + 1], h * eta, s_noise)
            elif eta:
                scale = sig[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise
                x = x + noise(sig[i], sig[i + 1]) * scale
        history = [(denoised, h)] + history[:1]
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def _flow_sde_noise(x: Tensor, noise: NoiseSampler, sigma: float, sigma_next: float,
                    eta_h: float, s_noise: float) -> Tensor:
    """The SDE samplers' noise for a flow model. Their deterministic part (the damped x)
    is the ODE step to sigma_down = sigma_next e^(-eta h) (VE noise: sqrt(sigma_next^2 -
    sigma_down^2)); a flow model raises it from there with `renoise.raise_noise`."""
    step = raise_noise(sigma_next * math.exp(-eta_h), sigma_next, flow=True)
    return step.add_noise(x, noise(sigma, sigma_next), s_noise)


def _dpmpp_3m_correction(denoised: Tensor, history: list[tuple[Tensor, float | None]], h: float,
                         h_eta: float) -> Tensor | float:
    """Second (one previous D) or third (two previous) order terms of DPM++ 3M."""
    phi_2 = math.expm1(-h_eta) / h_eta + 1
    if len(history) == 2 and history[0][1] is not None and history[1][1] is not None:
        (denoised_1, h_1), (denoised_2, h_2) = history
        r0, r1 = h_1 / h, h_2 / h
        d1_0 = (denoised - denoised_1) / r0
        d1_1 = (denoised_1 - denoised_2) / r1
        d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi_3 = phi_2 / h_eta - 0.5
        return phi_2 * d1 - phi_3 * d2
    if history and history[0][1] is not None:
        denoised_1, h_1 = history[0]
        return phi_2 * (denoised - denoised_1) / (h_1 / h)
    return 0.0
