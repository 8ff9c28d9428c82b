"""Euler-family samplers of the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma.

Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models": Euler (first order) and Heun (second order, Algorithm 2) with optional
stochastic churn; DPM2 is Heun's idea with the second evaluation at the geometric
midpoint sigma_mid = sqrt(sigma * sigma_next) (Lu et al., 2022, DPM-Solver-2 in sigma
form). The ancestral variants split each step into a deterministic step to sigma_down
and fresh noise of size sigma_up (Ho et al., 2020). LMS is the linear multistep method
on the ODE derivative with Lagrange-interpolation coefficients integrated exactly.
`flow=True` (rectified-flow models): the same ODE steps, noise added as `renoise.py` derives.
Algorithms as in k-diffusion's `sampling.py` (MIT); this is an independent write-up.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import Tensor

from modules.sampling.base import (
    Model,
    NoiseSampler,
    SamplerGen,
    SamplerStep,
    add_churn,
    churn_gamma,
    denoise,
    require_noise,
    schedule_list,
    to_d,
)
from modules.sampling.renoise import ancestral, flow_churn

INF = float("inf")


def sample_euler(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 *, noise_sampler: NoiseSampler | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0,
                 flow: bool = False) -> SamplerGen:
    """Euler's method, with optional churn (Karras et al. 2022, Algorithm 2 without the
    correction)."""
    sig = schedule_list(sigmas)
    churn = flow_churn if flow else add_churn
    total = len(sig) - 1
    for i in range(total):
        # Optionally add noise, then one Euler step from sigma_hat.
        gamma = churn_gamma(sig[i], total, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sig[i], gamma, s_noise, noise_sampler, sig[i + 1])
        denoised = denoise(model, x, sigma_hat, extra_args)
        x = x + to_d(x, sigma_hat, denoised) * (sig[i + 1] - sigma_hat)
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def sample_euler_ancestral(model: Model, x: Tensor, sigmas: Tensor,
                           extra_args: dict[str, Any] | None = None, *,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, flow: bool = False) -> SamplerGen:
    """Euler steps to sigma_down, then fresh noise up to sigma_next."""
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        step = ancestral(sig[i], sig[i + 1], eta, flow=flow)
        x = x + to_d(x, sig[i], denoised) * (step.sigma_down - sig[i])
        # Re-noise (never after the final step to sigma = 0).
        if sig[i + 1] > 0:
            x = step.add_noise(x, noise(sig[i], sig[i + 1]), s_noise)
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def sample_heun(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                *, noise_sampler: NoiseSampler | None = None, s_churn: float = 0.0,
                s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0,
                flow: bool = False) -> SamplerGen:
    """Heun's second-order method (Karras et al. 2022, Algorithm 2); Euler on the last step to 0."""
    sig = schedule_list(sigmas)
    churn = flow_churn if flow else add_churn
    total = len(sig) - 1
    for i in range(total):
        gamma = churn_gamma(sig[i], total, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sig[i], gamma, s_noise, noise_sampler, sig[i + 1])
        denoised = denoise(model, x, sigma_hat, extra_args)
        d = to_d(x, sigma_hat, denoised)
        dt = sig[i + 1] - sigma_hat
        if sig[i + 1] == 0:
            # Euler step into sigma = 0, where the derivative is undefined.
            x = x + d * dt
        else:
            # Trapezoidal correction with the derivative at the Euler prediction.
            x_2 = x + d * dt
            d_2 = to_d(x_2, sig[i + 1], denoise(model, x_2, sig[i + 1], extra_args))
            x = x + (d + d_2) / 2 * dt
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def sample_dpm_2(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 *, noise_sampler: NoiseSampler | None = None, s_churn: float = 0.0,
                 s_tmin: float = 0.0, s_tmax: float = INF, s_noise: float = 1.0,
                 flow: bool = False) -> SamplerGen:
    """DPM-Solver-2 in sigma form: the midpoint derivative taken at sqrt(sigma * sigma_next)."""
    sig = schedule_list(sigmas)
    churn = flow_churn if flow else add_churn
    total = len(sig) - 1
    for i in range(total):
        gamma = churn_gamma(sig[i], total, s_churn, s_tmin, s_tmax)
        x, sigma_hat = churn(x, sig[i], gamma, s_noise, noise_sampler, sig[i + 1])
        denoised = denoise(model, x, sigma_hat, extra_args)
        x = _dpm_2_update(model, x, denoised, sigma_hat, sig[i + 1], extra_args)
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def _dpm_2_update(model: Model, x: Tensor, denoised: Tensor, sigma: float, sigma_next: float,
                  extra_args: dict[str, Any] | None) -> Tensor:
    """One DPM2 step from sigma to sigma_next given D(x, sigma)."""
    d = to_d(x, sigma, denoised)
    if sigma_next == 0:
        return x + d * (sigma_next - sigma)
    # Half a step in log sigma, then the full step with the midpoint derivative.
    sigma_mid = math.exp((math.log(sigma) + math.log(sigma_next)) / 2)
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, denoise(model, x_2, sigma_mid, extra_args))
    return x + d_2 * (sigma_next - sigma)


def sample_dpm_2_ancestral(model: Model, x: Tensor, sigmas: Tensor,
                           extra_args: dict[str, Any] | None = None, *,
                           noise_sampler: NoiseSampler | None = None, eta: float = 1.0,
                           s_noise: float = 1.0, flow: bool = False) -> SamplerGen:
    """DPM2 to sigma_down, then fresh noise up to sigma_next."""
    sig = schedule_list(sigmas)
    noise = require_noise(noise_sampler, x)
    total = len(sig) - 1
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        step = ancestral(sig[i], sig[i + 1], eta, flow=flow)
        x = _dpm_2_update(model, x, denoised, sig[i], step.sigma_down, extra_args)
        if sig[i + 1] > 0:
            x = step.add_noise(x, noise(sig[i], sig[i + 1]), s_noise)
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def lms_coefficient(order: int, sig: list[float], i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node i - j."""
    nodes = [sig[i - k] for k in range(order)]
    # The basis polynomial: product over the other nodes of (tau - node_k) / (node_j - node_k).
    others = [node for k, node in enumerate(nodes) if k != j]
    basis = (np.polynomial.Polynomial.fromroots(others) if others
             else np.polynomial.Polynomial([1.0]))
    basis = basis / math.prod(nodes[j] - node for node in others)
    antiderivative = basis.integ()
    return float(antiderivative(sig[i + 1]) - antiderivative(sig[i]))


def sample_lms(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None, *,
               noise_sampler: NoiseSampler | None = None, order: int = 4,
               flow: bool = False) -> SamplerGen:
    """Linear multistep: x += sum_j c_j d_{i-j}, exact integrals of the interpolating polynomial
    (the same for flow models: no noise is added)."""
    sig = schedule_list(sigmas)
    total = len(sig) - 1
    derivatives: list[Tensor] = []
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        derivatives = (derivatives + [to_d(x, sig[i], denoised)])[-order:]
        cur_order = min(i + 1, order)
        coefficients = [lms_coefficient(cur_order, sig, i, j) for j in range(cur_order)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(derivatives)))
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x
