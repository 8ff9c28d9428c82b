"""Noise schedules: the decreasing sigmas a sampler walks, one plain function each.

Each function returns a float32 tensor of sigmas, largest first, usually with a final 0
(steps + 1 values for `n` steps). Those that need the model's own discretisation take
`model_sigmas`: the model's sigma table in ascending order, index = training timestep
(see `denoiser.discrete_sigmas`). Behaviour follows A1111 v1.10.1 (docs/a1111-semantics.md,
"Schedule types"):

- uniform / normal / sgm_uniform: uniform in timestep t, sigma by log-sigma interpolation
  (k-diffusion's DiscreteSchedule); sgm_uniform drops the last of n + 1 points (SGM).
- karras: Karras et al. (2022), eq. 5, rho = 7. exponential / polyexponential: uniform in
  log sigma (to the power rho).
- kl_optimal: Sabour et al. (2024), "Align Your Steps", the KL-optimal schedule
  tan((1 - i/n) atan(sigma_max) + i/n atan(sigma_min)) — n + 1 values, no final 0.
- align_your_steps: Sabour et al. (2024) 11-sigma tables, log-linearly interpolated.
- simple / ddim: every k-th entry of the model table. beta: Lee et al. (2024), "Beta
  Sampling is All You Need", Beta(0.6, 0.6) quantiles mapped linearly onto
  [sigma_min, sigma_max] (v1.10.1 behaviour).
- timesteps / unipc_time_uniform: A1111's discretisations for DDIM/PLMS and UniPC.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def _with_zero(values: Tensor | list[float] | np.ndarray) -> Tensor:
    """Float32 sigmas with a final 0 appended."""
    sigmas = torch.as_tensor(np.asarray(values, dtype=np.float64)).float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sigma_to_t(sigma: float, model_sigmas: Tensor, quantize: bool = False) -> float:
    """The (fractional) timestep of a sigma, interpolating log sigma between table entries."""
    log_sigmas = model_sigmas.double().log()
    log_sigma = math.log(sigma)
    if quantize:
        return float((log_sigmas - log_sigma).abs().argmin())
    # The bracketing entries and the linear weight between them, clamped to the table.
    position = torch.searchsorted(log_sigmas, torch.tensor([log_sigma], dtype=torch.float64))
    high = int(position.clamp(1, len(log_sigmas) - 1))
    low_value, high_value = float(log_sigmas[high - 1]), float(log_sigmas[high])
    w = min(max((log_sigma - low_value) / (high_value - low_value), 0.0), 1.0)
    return (high - 1) + w


def t_to_sigma(t: Tensor, model_sigmas: Tensor) -> Tensor:
    """Sigmas at fractional timesteps, interpolating log sigma between table entries."""
    log_sigmas = model_sigmas.float().log()
    t = t.float()
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def uniform(n: int, model_sigmas: Tensor) -> Tensor:
    """n sigmas uniform in t from the last timestep to 0 (the model's own discretisation)."""
    t = torch.linspace(len(model_sigmas) - 1, 0, n)
    return _with_zero(t_to_sigma(t, model_sigmas))


def normal(n: int, sigma_min: float, sigma_max: float, model_sigmas: Tensor, *, sgm: bool = False,
           quantize: bool = True) -> Tensor:
    """n sigmas uniform in t between sigma_max and sigma_min (SGM: n + 1 points, last dropped)."""
    start = sigma_to_t(sigma_max, model_sigmas, quantize)
    end = sigma_to_t(sigma_min, model_sigmas, quantize)
    t = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return _with_zero(t_to_sigma(t, model_sigmas))


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, model_sigmas: Tensor, *,
                quantize: bool = True) -> Tensor:
    return normal(n, sigma_min, sigma_max, model_sigmas, sgm=True, quantize=quantize)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): uniform in sigma^(1/rho)."""
    ramp = np.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return _with_zero((max_inv + ramp * (min_inv - max_inv)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Uniform in log sigma."""
    return _with_zero(np.exp(np.linspace(math.log(sigma_max), math.log(sigma_min), n)))


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """Uniform in log sigma after a polynomial warp of the ramp."""
    ramp = np.linspace(1, 0, n) ** rho
    return _with_zero(np.exp(ramp * (math.log(sigma_max) - math.log(sigma_min))
                             + math.log(sigma_min)))


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """tan of a linear ramp between atan(sigma_max) and atan(sigma_min); n + 1 values, no 0."""
    i = np.arange(n + 1) / n
    return torch.as_tensor(np.tan(i * math.atan(sigma_min)
                                  + (1 - i) * math.atan(sigma_max))).float()


def loglinear_interp(values: tuple[float, ...] | list[float], num: int) -> np.ndarray:
    """Resample a decreasing list to `num` points, linearly in log value."""
    xs = np.linspace(0, 1, len(values))
    ys = np.log(np.asarray(values, dtype=np.float64)[::-1])
    return np.exp(np.interp(np.linspace(0, 1, num), xs, ys))[::-1].copy()


def align_your_steps(n: int, *, is_sdxl: bool = False) -> Tensor:
    """The AYS table for SD1 or SDXL, used as is for 11 steps, else log-linearly resampled."""
    table = AYS_SDXL if is_sdxl else AYS_SD1
    return _with_zero(list(table) if n == len(table) else loglinear_interp(table, n))


def simple(n: int, model_sigmas: Tensor) -> Tensor:
    """Every len/n-th sigma of the table, from the top."""
    stride = len(model_sigmas) / n
    return _with_zero([float(model_sigmas[-(1 + int(k * stride))]) for k in range(n)])


def ddim(n: int, model_sigmas: Tensor) -> Tensor:
    """Every (len // n)-th sigma from index 1 up, reversed (may give more than n values)."""
    stride = max(len(model_sigmas) // n, 1)
    return _with_zero([float(model_sigmas[k]) for k in range(1, len(model_sigmas), stride)][::-1])


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6,
         beta_: float = 0.6) -> Tensor:
    """Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n), mapped onto [sigma_min, sigma_max]."""
    from scipy import stats  # deferred: scipy is only needed for this schedule

    quantiles = stats.beta.ppf(1 - np.linspace(0, 1, n), alpha, beta_)
    return _with_zero(sigma_min + quantiles * (sigma_max - sigma_min))


def timesteps(n: int, model_sigmas: Tensor) -> Tensor:
    """A1111's DDIM/PLMS grid: t_k = k * (T // n) + 1, walked down; n - 1 steps, no final 0."""
    T = len(model_sigmas)
    t = torch.clamp(torch.arange(0, T, T // n) + 1, 0, T - 1)
    return model_sigmas.float()[t].flip(0)


def unipc_time_uniform(n: int, model_sigmas: Tensor) -> Tensor:
    """UniPC's grid: n steps uniform in continuous time (1 .. 1/T), no final 0.

    UniPC's discrete VP schedule interpolates log(alpha) = log(abar) / 2 linearly in
    t in (k + 1) / T; sigma = sqrt(1 - alpha^2) / alpha.
    """
    T = len(model_sigmas)
    log_alpha = -0.5 * torch.log1p(model_sigmas.double() ** 2)
    t_grid = torch.linspace(1.0, 1.0 / T, n + 1, dtype=torch.float64)
    knots = torch.arange(1, T + 1, dtype=torch.float64) / T
    log_alpha_t = torch.as_tensor(np.interp(t_grid.numpy(), knots.numpy(), log_alpha.numpy()))
    return torch.sqrt(torch.expm1(-2 * log_alpha_t)).float()
