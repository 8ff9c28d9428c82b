"""Adding fresh noise inside a sampler, for variance-exploding and rectified-flow models.

Every stochastic sampler here (ancestral, SDE, Restart, churn, LCM, DDIM with eta) is a
deterministic ODE step followed by fresh Gaussian noise. The deterministic part needs no
change for a flow model: with D = x - sigma * v its probability-flow ODE is literally
k-diffusion's dx/dsigma = (x - D(x, sigma)) / sigma (see `flow.py`). Only the noise
differs, because the marginals differ:

    VE (SD1/SDXL):  x_sigma = x0 + sigma * eps
    flow (SD3/Flux): x_sigma = alpha_sigma * x0 + sigma * eps,  alpha_sigma = 1 - sigma

Raising the noise level from sigma_a to sigma_b (sigma_a < sigma_b). Suppose x is
distributed as x_a = alpha_a x0 + sigma_a eps_1. We want x_b = alpha_b x0 + sigma_b eps
with fresh z independent of eps_1. Scaling x by c = alpha_b / alpha_a gives the right
signal, alpha_b x0 + c sigma_a eps_1, and leaves a noise variance of c^2 sigma_a^2, so
the fresh noise must supply the rest:

    x_b = c * x_a + sqrt(sigma_b^2 - c^2 sigma_a^2) * z,   c = (1 - sigma_b) / (1 - sigma_a).

The radicand is >= 0 exactly when sigma_b / alpha_b >= sigma_a / alpha_a, that is when
sigma_b >= sigma_a. (VE: c = 1 and the noise std is sqrt(sigma_b^2 - sigma_a^2).)
Equivalently, y = x / alpha is a VE latent with noise level s = sigma / alpha, and the
step is the VE step from s_a to s_b scaled by alpha_b. The VE formula used on a flow
model skips the factor c < 1: x keeps alpha_a x0 where alpha_b x0 belongs, so every
re-noised latent is too large for its sigma and the error accumulates over the steps.

An ancestral step from sigma to sigma_next first solves the ODE down to sigma_down <=
sigma_next and then raises the noise back to sigma_next with the formula above. Any
sigma_down in [0, sigma_next] keeps the marginal at sigma_next right, because the
ODE keeps marginals and the re-noising matches them. For a flow model the split is
(the construction other flow-model UIs use):

    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)     (clamped at 0)

eta = 0 gives sigma_down = sigma_next (the ODE step, c = 1, no noise). eta = 1 gives
sigma_next^2 / sigma, the same sigma_down as DDPM's ancestral step (Ho et al., 2020)
in VE form. For VE models `base.ancestral_step` is used unchanged. The SDE samplers
(DPM++ 2M / 3M SDE) follow the same rule with their own
sigma_down = sigma_next * e^(-eta h). Restart and churn raise the noise
between two given sigmas. For a flow model churn's sigma_hat is capped at 1 (pure noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from modules.sampling.base import NoiseSampler, ancestral_step, require_noise


@dataclass(frozen=True)
class Renoise:
    """Go from noise level `sigma_down` up to a higher one: x <- scale * x + std * z."""

    sigma_down: float
    scale: float  # alpha_next / alpha_down: 1 for VE models
    std: float  # the fresh noise's std (VE: sigma_up)

    def add_noise(self, x: Tensor, z: Tensor, s_noise: float = 1.0) -> Tensor:
        """scale * x + z * s_noise * std (as `x + z * s_noise * sigma_up` when scale is 1)."""
        if self.scale != 1.0:
            x = x * self.scale
        if s_noise != 1.0:
            z = z * s_noise
        return x + z * self.std


def raise_noise(sigma_from: float, sigma_to: float, *, flow: bool) -> Renoise:
    """The noise to add to an x at `sigma_from` so that it is distributed as at `sigma_to`."""
    if sigma_to <= sigma_from:
        return Renoise(sigma_from, 1.0, 0.0)
    if not flow:
        return Renoise(sigma_from, 1.0, math.sqrt(sigma_to**2 - sigma_from**2))
    scale = (1 - sigma_to) / (1 - sigma_from)
    return Renoise(sigma_from, scale, math.sqrt(max(0.0, sigma_to**2 - (scale * sigma_from)**2)))


def flow_sigma_down(sigma: float, sigma_next: float, eta: float) -> float:
    """Where the ODE part of a flow model's ancestral step ends (see the module docstring)."""
    if not eta or sigma_next == 0:
        return sigma_next
    return max(0.0, sigma_next * (1 + (sigma_next / sigma - 1) * eta))


def ancestral(sigma: float, sigma_next: float, eta: float, *, flow: bool) -> Renoise:
    """An ancestral step's split: the ODE to `sigma_down`, then fresh noise to sigma_next."""
    if not flow:
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        return Renoise(sigma_down, 1.0, sigma_up)
    return raise_noise(flow_sigma_down(sigma, sigma_next, eta), sigma_next, flow=True)


def flow_churn(x: Tensor, sigma: float, gamma: float, s_noise: float,
               noise_sampler: NoiseSampler | None, sigma_next: float) -> tuple[Tensor, float]:
    """`base.add_churn` for a flow model: sigma_hat = min(sigma * (1 + gamma), 1)."""
    sigma_hat = min(sigma * (gamma + 1), 1.0)
    if gamma > 0 and sigma_hat > sigma:
        z = require_noise(noise_sampler, x)(sigma, sigma_next)
        x = raise_noise(sigma, sigma_hat, flow=True).add_noise(x, z, s_noise)
    return x, sigma_hat
