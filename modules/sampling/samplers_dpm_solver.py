"""DPM-Solver (fast and adaptive), singlestep solvers in t = -log(sigma).

Lu et al. (2022), "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic Model
Sampling in Around 10 Steps". With t = -log sigma and eps = (x - D) / sigma, the
solvers of order 1, 2 and 3 (Algorithms 1-2 of the paper, r1 = 1/2 resp. 1/3, 2/3)
integrate the ODE over a step of length h. "DPM fast" spends a budget of n model
evaluations on uniform steps in t of order 3 (then 2, 1); "DPM adaptive" picks step
sizes with a PID controller on the difference between an order-(k-1) and an order-k
solution (the paper's section 4.2, and Gustafsson's PI control). Both run from the
schedule's largest sigma to its smallest non-zero one and return x at that sigma, as
k-diffusion's `sample_dpm_fast` / `sample_dpm_adaptive` (MIT) do; written anew.
With eta > 0 they are ancestral; `flow=True` takes a flow model's split (`renoise.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modules.sampling.base import (
    Model,
    NoiseSampler,
    SamplerGen,
    SamplerStep,
    ancestral_step,
    denoise,
    require_noise,
    schedule_list,
)
from modules.sampling.renoise import Renoise, flow_sigma_down, raise_noise


class _EpsCache:
    """eps = (x - D(x, sigma)) / sigma at the solver's points, each evaluated once per step."""

    def __init__(self, model: Model, extra_args: dict[str, Any] | None) -> None:
        self.model, self.extra_args, self.values = model, extra_args, {}

    def eps(self, key: str, x: Tensor, t: float) -> Tensor:
        if key not in self.values:
            sigma = math.exp(-t)
            self.values[key] = (x - denoise(self.model, x, sigma, self.extra_args)) / sigma
        return self.values[key]


def _solver_1(cache: _EpsCache, x: Tensor, t: float, t_next: float) -> Tensor:
    """DPM-Solver-1 (= DDIM): x_next = x - sigma_next * expm1(h) * eps."""
    h = t_next - t
    return x - math.exp(-t_next) * math.expm1(h) * cache.eps("eps", x, t)


def _solver_2(cache: _EpsCache, x: Tensor, t: float, t_next: float, r1: float = 0.5) -> Tensor:
    """DPM-Solver-2 with an intermediate point at t + r1 h."""
    h = t_next - t
    eps = cache.eps("eps", x, t)
    s1 = t + r1 * h
    u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
    eps_r1 = cache.eps("eps_r1", u1, s1)
    sigma_next = math.exp(-t_next)
    return (x - sigma_next * math.expm1(h) * eps
            - sigma_next / (2 * r1) * math.expm1(h) * (eps_r1 - eps))


def _solver_3(cache: _EpsCache, x: Tensor, t: float, t_next: float, r1: float = 1 / 3,
              r2: float = 2 / 3) -> Tensor:
    """DPM-Solver-3 with intermediate points at t + r1 h and t + r2 h."""
    h = t_next - t
    eps = cache.eps("eps", x, t)
    s1, s2 = t + r1 * h, t + r2 * h
    u1 = x - math.exp(-s1) * math.expm1(r1 * h) * eps
    eps_r1 = cache.eps("eps_r1", u1, s1)
    phi_r2 = math.expm1(r2 * h) / (r2 * h) - 1
    u2 = (x - math.exp(-s2) * math.expm1(r2 * h) * eps
          - math.exp(-s2) * (r2 / r1) * phi_r2 * (eps_r1 - eps))
    eps_r2 = cache.eps("eps_r2", u2, s2)
    sigma_next = math.exp(-t_next)
    return (x - sigma_next * math.expm1(h) * eps
            - sigma_next / r2 * (math.expm1(h) / h - 1) * (eps_r2 - eps))


def _solver(order: int, cache: _EpsCache, x: Tensor, t: float, t_next: float) -> Tensor:
    if order == 1:
        return _solver_1(cache, x, t, t_next)
    return _solver_2(cache, x, t, t_next) if order == 2 else _solver_3(cache, x, t, t_next)


def _ancestral_target(t: float, t_next: float, t_end: float, eta: float) -> tuple[float, float]:
    """Where the deterministic part of a step ends (in t) and how much noise follows."""
    if not eta:
        return t_next, 0.0
    sigma_down, _ = ancestral_step(math.exp(-t), math.exp(-t_next), eta)
    t_down = min(t_end, -math.log(sigma_down))
    return t_down, math.sqrt(math.exp(-2 * t_next) - math.exp(-2 * t_down))


def _ancestral_split(t: float, t_next: float, t_end: float, eta: float,
                     flow: bool) -> tuple[float, Renoise]:
    """`_ancestral_target` as (t_down, the noise to add): VE, or a flow model's split."""
    if not flow or not eta:
        t_down, sigma_up = _ancestral_target(t, t_next, t_end, eta)
        return t_down, Renoise(math.exp(-t_down), 1.0, sigma_up)
    sigma_down = flow_sigma_down(math.exp(-t), math.exp(-t_next), eta)
    t_down = t_end if sigma_down <= math.exp(-t_end) else min(t_end, -math.log(sigma_down))
    return t_down, raise_noise(math.exp(-t_down), math.exp(-t_next), flow=True)


def _add_noise(x: Tensor, step: Renoise, s_noise: float, noise: NoiseSampler, t: float,
               t_next: float) -> Tensor:
    """The step's fresh noise (VE: `x + sigma_up * s_noise * z`, as k-diffusion writes it)."""
    if not step.std:
        return x
    z = noise(math.exp(-t), math.exp(-t_next))
    if step.scale == 1.0:
        return x + step.std * s_noise * z
    return step.add_noise(x, z, s_noise)


def _sigma_range(sigmas: Tensor) -> tuple[float, float]:
    """The largest and the smallest non-zero sigma of a schedule."""
    positive = [s for s in schedule_list(sigmas) if s > 0]
    if not positive:
        raise ValueError("DPM fast/adaptive need a schedule with a non-zero sigma")
    return min(positive), max(positive)


def sample_dpm_fast(model: Model, x: Tensor, sigmas: Tensor,
                    extra_args: dict[str, Any] | None = None, *,
                    noise_sampler: NoiseSampler | None = None, eta: float = 0.0,
                    s_noise: float = 1.0, flow: bool = False) -> SamplerGen:
    """DPM-Solver-fast: len(sigmas) - 1 model evaluations on uniform steps in t."""
    sigma_min, sigma_max = _sigma_range(sigmas)
    nfe = len(sigmas) - 1
    noise = require_noise(noise_sampler, x)
    t_start, t_end = -math.log(sigma_max), -math.log(sigma_min)
    # Order 3 steps as long as the budget lasts, then a 2 and/or 1.
    m = math.ceil(nfe / 3)
    ts = torch.linspace(t_start, t_end, m + 1, dtype=torch.float64).tolist()
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache = _EpsCache(model, extra_args)
        t, t_next = ts[i], ts[i + 1]
        t_down, step = _ancestral_split(t, t_next, t_end, eta, flow)
        denoised = x - math.exp(-t) * cache.eps("eps", x, t)
        x = _add_noise(_solver(order, cache, x, t, t_down), step, s_noise, noise, t, t_next)
        yield SamplerStep(i, len(orders), x, denoised, math.exp(-t), math.exp(-t_next))
    return x


@dataclass
class PIDStepController:
    """Step-size control from the scaled error (Söderlind 2003, PID digital filter)."""

    h: float
    order: float
    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    accept_safety: float = 0.81
    eps: float = 1e-8
    inv_errors: list[float] = field(default_factory=list)

    def propose(self, error: float) -> bool:
        """Scale h by the filtered inverse error; say whether the last step is accepted."""
        b1 = (self.pcoeff + self.icoeff + self.dcoeff) / self.order
        b2 = -(self.pcoeff + 2 * self.dcoeff) / self.order
        b3 = self.dcoeff / self.order
        inv_error = 1 / (error + self.eps)
        if not self.inv_errors:
            self.inv_errors = [inv_error] * 3
        self.inv_errors[0] = inv_error
        e = self.inv_errors
        factor = 1 + math.atan(e[0] ** b1 * e[1] ** b2 * e[2] ** b3 - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.inv_errors[2], self.inv_errors[1] = self.inv_errors[1], self.inv_errors[0]
        self.h *= factor
        return accept


def sample_dpm_adaptive(model: Model, x: Tensor, sigmas: Tensor,
                        extra_args: dict[str, Any] | None = None, *,
                        noise_sampler: NoiseSampler | None = None, order: int = 3,
                        rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81, eta: float = 0.0,
                        s_noise: float = 1.0, flow: bool = False) -> SamplerGen:
    """DPM-Solver-12 / -23 with adaptive steps; yields one event per accepted step."""
    if order not in (2, 3):
        raise ValueError(f"DPM adaptive order must be 2 or 3, got {order}")
    sigma_min, sigma_max = _sigma_range(sigmas)
    noise = require_noise(noise_sampler, x)
    s, t_end = -math.log(sigma_max), -math.log(sigma_min)
    pid = PIDStepController(abs(h_init), 1.5 if eta else order, pcoeff, icoeff, dcoeff,
                            accept_safety)
    x_prev, accepted = x, 0
    while s < t_end - 1e-5:
        cache = _EpsCache(model, extra_args)
        t = min(t_end, s + pid.h)
        t_down, step = _ancestral_split(s, t, t_end, eta, flow)
        denoised = x - math.exp(-s) * cache.eps("eps", x, s)
        # A lower- and a higher-order solution from the same evaluations.
        if order == 2:
            x_low, x_high = _solver_1(cache, x, s, t_down), _solver_2(cache, x, s, t_down)
        else:
            x_low, x_high = _solver_2(cache, x, s, t_down, r1=1 / 3), _solver_3(cache, x, s, t_down)
        delta = torch.clamp(rtol * torch.maximum(x_low.abs(), x_prev.abs()), min=atol)
        error = float(torch.linalg.norm((x_low - x_high) / delta)) / x.numel() ** 0.5
        if pid.propose(error):
            x_prev = x_low
            x = _add_noise(x_high, step, s_noise, noise, s, t)
            yield SamplerStep(accepted, len(sigmas) - 1, x, denoised, math.exp(-s), math.exp(-t))
            accepted, s = accepted + 1, t
    return x
