"""DDIM, DDIM CFG++, PLMS and UniPC, written in sigma space.

A1111 runs these as "timestep" samplers on the variance-preserving latent x_t with
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. With sigma_t = sqrt((1 - abar_t) / abar_t)
the same latent in sigma space is x = x_t / sqrt(abar_t) = x0 + sigma_t eps, and every
update below is that formulation divided by sqrt(abar) of its target:

- DDIM (Song et al., 2021): x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - s^2) eps + s z
  with s = eta sqrt((1-abar_prev)/(1-abar_t) (1 - abar_t/abar_prev)) becomes
  x_prev = x0 + sigma_down eps + sigma_up z, where sigma_up = eta sigma_prev
  sqrt(sigma_t^2 - sigma_prev^2) / sigma_t and sigma_down^2 = sigma_prev^2 - sigma_up^2:
  exactly the ancestral split of `base.ancestral_step` (eta = 0: an Euler step). For
  flow models (`flow=True`) the split and the noise are `renoise.ancestral`'s.
- DDIM CFG++ (Chung et al., 2024) takes the direction from the unconditional eps and a
  guidance scale divided by 12.5 (the registry sets the multiplier on the CFG denoiser).
- PLMS (Liu et al., 2022, "Pseudo Numerical Methods for Diffusion Models"): Adams-
  Bashforth on eps with a pseudo-improved-Euler first step; each DDIM(eta=0) update is
  an Euler step x += (sigma_prev - sigma) eps in sigma space.
- UniPC (Zhao et al., 2023, "UniPC: A Unified Predictor-Corrector Framework"), the
  data-prediction multistep B(h) variants: in lambda = -log sigma the VP factors alpha_t
  cancel, leaving x_t = (sigma_t / sigma_s) x - expm1(-h) D - B(h) * (corrections).

The model is called with x in sigma space at sigma_t; the `Denoiser` rescales the input
by 1/sqrt(sigma^2 + 1) = sqrt(abar_t) and maps sigma_t back to t, so the U-Net sees the
same input and timestep as in the timestep formulation. Where sampling starts from pure
noise and stops at a non-zero sigma, the caller converts between latents with
`registry.initial_noise_scale` / `registry.final_latent_scale`.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Protocol

import numpy as np
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
from modules.sampling.renoise import ancestral


class UncondRecordingModel(Model, Protocol):
    """A guided denoiser that keeps the unconditional D(x, sigma) of its last call."""

    last_uncond: Tensor | None


def sample_ddim(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                *, noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
                flow: bool = False) -> SamplerGen:
    """DDIM with stochasticity eta (0: deterministic)."""
    return _ddim(model, x, sigmas, extra_args, noise_sampler, eta, use_uncond_direction=False,
                 flow=flow)


def sample_ddim_cfgpp(model: UncondRecordingModel, x: Tensor, sigmas: Tensor,
                      extra_args: dict[str, Any] | None = None, *,
                      noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
                      flow: bool = False) -> SamplerGen:
    """DDIM CFG++: the re-noising direction uses the unconditional prediction."""
    return _ddim(model, x, sigmas, extra_args, noise_sampler, eta, use_uncond_direction=True,
                 flow=flow)


def _ddim(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None,
          noise_sampler: NoiseSampler | None, eta: float, use_uncond_direction: bool, *,
          flow: bool) -> SamplerGen:
    sig = schedule_list(sigmas)
    total = len(sig) - 1
    for i in range(total):
        denoised = denoise(model, x, sig[i], extra_args)
        direction_source = _last_uncond(model) if use_uncond_direction else denoised
        eps = to_d(x, sig[i], direction_source)
        # x0 plus the deterministic part of the noise, then fresh noise.
        step = ancestral(sig[i], sig[i + 1], eta, flow=flow)
        x = denoised + eps * step.sigma_down
        if step.std:
            x = step.add_noise(x, require_noise(noise_sampler, x)(sig[i], sig[i + 1]))
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def _last_uncond(model: Model) -> Tensor:
    uncond = getattr(model, "last_uncond", None)
    if uncond is None:
        raise TypeError("DDIM CFG++ needs a CFG denoiser that records the unconditional prediction "
                        "(CFGDenoiser(record_uncond=True))")
    return uncond


AB_COEFFICIENTS = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12),
                   (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def sample_plms(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                *, noise_sampler: NoiseSampler | None = None, flow: bool = False) -> SamplerGen:
    """PLMS: Adams-Bashforth on eps (orders 2-4), pseudo improved Euler on the first step
    (the same for flow models: no noise is added)."""
    sig = schedule_list(sigmas)
    total = len(sig) - 1
    old_eps: list[Tensor] = []  # newest last
    for i in range(total):
        eps = to_d(x, sig[i], denoise(model, x, sig[i], extra_args))
        dt = sig[i + 1] - sig[i]
        if not old_eps and sig[i + 1] > 0:
            # Pseudo improved Euler: average eps here and at the Euler prediction.
            x_pred = x + eps * dt
            eps_prime = (eps + to_d(x_pred, sig[i + 1],
                                    denoise(model, x_pred, sig[i + 1], extra_args))) / 2
        else:
            history = [eps] + old_eps[::-1]
            coefficients = AB_COEFFICIENTS[min(len(old_eps), 3)]
            eps_prime = sum(c * e for c, e in zip(coefficients, history))
        denoised = x - eps_prime * sig[i]
        x = x + eps_prime * dt
        old_eps = (old_eps + [eps])[-3:]
        yield SamplerStep(i, total, x, denoised, sig[i], sig[i + 1])
    return x


def _unipc_update(model: Model, x: Tensor, history: list[tuple[Tensor, float]], sigma_t: float,
                  order: int, variant: Literal["bh1", "bh2"], use_corrector: bool,
                  extra_args: dict[str, Any] | None) -> tuple[Tensor, Tensor | None]:
    """One UniP (predictor) step of the given order, plus the UniC corrector when asked."""
    m0, sigma_s = history[-1]
    lam_s, lam_t = -math.log(sigma_s), -math.log(sigma_t)
    h = lam_t - lam_s
    # Ratios r_k of earlier steps and the scaled differences D1_k of their predictions.
    rks, d1s = [], []
    for m_k, sigma_k in reversed(history[-order:-1]):
        rk = (-math.log(sigma_k) - lam_s) / h
        rks.append(rk)
        d1s.append((m_k - m0) / rk)
    rks.append(1.0)
    # The linear system R rho = b of the B(h) variant (phi functions of hh = -h).
    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k, factorial = h_phi_1 / hh - 1, 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R, b = np.array(rows), np.array(b)
    # Predictor.
    x_base = (sigma_t / sigma_s) * x - h_phi_1 * m0
    x_t = x_base
    if d1s:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_t = x_base - b_h * sum(r * d for r, d in zip(rhos_p, d1s))
    if not use_corrector:
        return x_t, None
    # Corrector with the model evaluated at the predicted point (reused by the next step).
    rhos_c = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
    model_t = denoise(model, x_t, sigma_t, extra_args)
    corr = sum((r * d for r, d in zip(rhos_c[:-1], d1s)), start=rhos_c[-1] * (model_t - m0))
    return x_base - b_h * corr, model_t


def sample_unipc(model: Model, x: Tensor, sigmas: Tensor, extra_args: dict[str, Any] | None = None,
                 *, noise_sampler: NoiseSampler | None = None, order: int = 3,
                 variant: Literal["bh1", "bh2"] = "bh1",
                 lower_order_final: bool = True, flow: bool = False) -> SamplerGen:
    """UniPC multistep (data prediction); the order is capped by the number of steps
    (the same for flow models: no noise is added)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant must be 'bh1' or 'bh2', got {variant!r}")
    sig = schedule_list(sigmas)
    steps = len(sig) - 1
    order = max(1, min(order, steps))
    history = [(denoise(model, x, sig[0], extra_args), sig[0])]
    for step in range(1, steps + 1):
        if step < order:
            step_order = step
        else:
            step_order = min(order, steps + 1 - step) if lower_order_final else order
        if sig[step] == 0:
            # The exponential integrator's limit at sigma = 0 is the last data prediction.
            x, model_x = history[-1][0], None
        else:
            x, model_x = _unipc_update(model, x, history, sig[step], step_order, variant,
                                       step < steps, extra_args)
        if step < steps:
            if model_x is None:
                model_x = denoise(model, x, sig[step], extra_args)
            history = (history + [(model_x, sig[step])])[-order:]
        denoised = model_x if model_x is not None else history[-1][0]
        yield SamplerStep(step - 1, steps, x, denoised, sig[step - 1], sig[step])
    return x
