"""Samplers against data whose denoiser and probability-flow ODE are known exactly.

For data x0 ~ N(mu, s^2), D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu), and the ODE
solution from (x_T, sigma_T) is
x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_T^2).
Deterministic samplers must converge to it at the order theory predicts; stochastic ones
must reproduce N(mu, s^2); per-image noise must make batches equal single runs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.sampling import registry as R
from modules.sampling import schedules as S
from modules.sampling.base import SamplerStep, run_sampler
from modules.sampling.noise import BrownianTreeNoiseSampler, randn_noise_sampler

MU, VAR = 0.3, 0.25
SIGMA_MAX, SIGMA_MIN = 10.0, 0.03
X_T = torch.linspace(-30, 30, 8, dtype=torch.float64)


def gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return MU + VAR / (VAR + s**2) * (x - MU)


def exact_ode(x_t: torch.Tensor, sigma_t: float, sigma: float) -> torch.Tensor:
    return MU + (x_t - MU) * math.sqrt(VAR + sigma**2) / math.sqrt(VAR + sigma_t**2)


def log_uniform(n: int) -> torch.Tensor:
    """n steps uniform in log sigma, stopping at SIGMA_MIN (no final 0: the error is measured
    there)."""
    return torch.as_tensor(np.exp(np.linspace(math.log(SIGMA_MAX), math.log(SIGMA_MIN), n + 1)))


def ode_error(label: str, n: int, **kwargs) -> float:
    spec = R.find_sampler(label)
    sigmas = log_uniform(n)
    x = run_sampler(spec.function(gaussian_denoiser, X_T.clone(), sigmas, None,
                                  **{**spec.fixed_kwargs, **kwargs}))
    return float((x - exact_ode(X_T, SIGMA_MAX, float(sigmas[-1]))).abs().max())


def fitted_order(label: str, ns: list[int], **kwargs) -> float:
    errors = [ode_error(label, n, **kwargs) for n in ns]
    return -float(np.polyfit(np.log(ns), np.log(errors), 1)[0])


# (label, kwargs, steps, expected order range). Measured slopes are noted in the report.
ORDER_CASES = [
    ("Euler", {}, [24, 48, 96, 192], (0.9, 1.1)),
    ("Euler a", {"eta": 0.0}, [24, 48, 96, 192], (0.9, 1.1)),
    ("DDIM", {"eta": 0.0}, [24, 48, 96, 192], (0.9, 1.1)),
    ("Heun", {}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM2", {}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM2 a", {"eta": 0.0}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM++ 2M", {}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM++ 2S a", {"eta": 0.0}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM++ SDE", {"eta": 0.0}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM++ 2M SDE", {"eta": 0.0}, [24, 48, 96, 192], (1.9, 2.2)),
    ("DPM++ 2M SDE Heun", {"eta": 0.0}, [24, 48, 96, 192], (1.9, 2.2)),
    ("PLMS", {}, [24, 48, 96, 192], (1.9, 2.2)),
    # Third-order multistep, but its first step is first order: globally second order.
    ("DPM++ 3M SDE", {"eta": 0.0}, [24, 48, 96, 192], (1.9, 2.4)),
    ("LMS", {}, [24, 48, 96, 192], (2.9, 3.8)),
    # Budgets of 3m + 2 evaluations end with an order-2 step: third order overall.
    ("DPM fast", {"eta": 0.0}, [26, 50, 98, 194], (2.8, 3.4)),
    # UniPC-3 with the corrector (order p + 1) when the final steps keep full order.
    ("UniPC", {"lower_order_final": False}, [24, 48, 96, 192], (3.6, 4.8)),
    # A1111's default lowers the order of the final steps: second order overall.
    ("UniPC", {}, [24, 48, 96, 192], (1.9, 2.4)),
]


@pytest.mark.parametrize(("label", "kwargs", "ns", "expected"), ORDER_CASES,
                         ids=[f"{c[0]}{'-' + str(c[1]) if c[1] else ''}" for c in ORDER_CASES])
def test_deterministic_order(label, kwargs, ns, expected):
    order = fitted_order(label, ns, **kwargs)
    assert expected[0] <= order <= expected[1], f"{label}: fitted order {order:.2f}"


DETERMINISTIC_TO_ZERO = ["Euler", "Heun", "DPM2", "LMS", "DPM++ 2M", "DDIM", "PLMS", "UniPC",
                         "DPM++ 3M SDE", "DPM++ 2M SDE", "DPM++ SDE", "DPM++ 2S a", "DPM adaptive",
                         "DPM fast"]


@pytest.mark.parametrize("label", DETERMINISTIC_TO_ZERO)
def test_deterministic_lands_on_exact_solution(label):
    """30 Karras steps to sigma = 0 land near the exact ODE endpoint (DPM fast/adaptive stop at
    sigma_min)."""
    spec = R.find_sampler(label)
    sigmas = S.karras(30, SIGMA_MIN, SIGMA_MAX).double()
    kwargs = {**spec.fixed_kwargs, **({"eta": 0.0} if spec.eta_source else {})}
    if label == "DPM adaptive":
        kwargs.update(rtol=1e-4, atol=1e-5)
    x = run_sampler(spec.function(gaussian_denoiser, X_T.clone(), sigmas, None, **kwargs))
    end = SIGMA_MIN if label in ("DPM fast", "DPM adaptive") else 0.0
    target = exact_ode(X_T, SIGMA_MAX, end)
    tol = {"Euler": 0.1, "DDIM": 0.1, "DPM adaptive": 0.005}.get(label, 0.02)
    assert float((x - target).abs().max()) < tol


def test_restart_below_20_steps_is_heun():
    sigmas = S.karras(12, SIGMA_MIN, SIGMA_MAX).double()
    heun = run_sampler(R.find_sampler("Heun").function(gaussian_denoiser, X_T.clone(), sigmas))
    restart = run_sampler(R.find_sampler("Restart").function(gaussian_denoiser, X_T.clone(),
                                                             sigmas))
    assert torch.equal(heun, restart)


# Stochastic samplers: (label, kwargs, steps).
# First-order ancestral steps shrink the variance at O(1/steps): they get more steps.
STOCHASTIC = [
    ("Euler a", {}, 200), ("DPM2 a", {}, 40), ("DPM++ 2S a", {}, 40), ("DPM++ SDE", {}, 200),
    ("DPM++ 2M SDE", {}, 40), ("DPM++ 2M SDE Heun", {}, 40), ("DPM++ 3M SDE", {}, 40),
    ("DDIM", {"eta": 1.0}, 200), ("Euler", {"s_churn": 5.0}, 200), ("Restart", {}, 24),
    ("DPM fast", {"eta": 1.0}, 40), ("DPM adaptive", {"eta": 1.0}, 40),
]


@pytest.mark.parametrize(("label", "kwargs", "steps"), STOCHASTIC,
                         ids=[c[0] + str(c[1]) for c in STOCHASTIC])
def test_stochastic_reproduces_the_distribution(label, kwargs, steps):
    n = 20_000
    generator = torch.Generator().manual_seed(1234)
    spec = R.find_sampler(label)
    sigmas = S.karras(steps, SIGMA_MIN, SIGMA_MAX).double()
    # Start exactly at the noised data distribution N(mu, s^2 + sigma_max^2).
    x = MU + math.sqrt(VAR + SIGMA_MAX**2) * torch.randn(n, generator=generator,
                                                         dtype=torch.float64)
    noise = lambda s, s_next: torch.randn(n, generator=generator, dtype=torch.float64)  # noqa: E731
    out = run_sampler(spec.function(gaussian_denoiser, x, sigmas, None, noise_sampler=noise,
                                    **{**spec.fixed_kwargs, **kwargs}))
    se_mean, se_var = math.sqrt(VAR / n), VAR * math.sqrt(2 / n)
    assert abs(float(out.mean()) - MU) < 4 * se_mean
    assert abs(float(out.var()) - VAR) < 4 * se_var + 0.05 * VAR, f"var {float(out.var()):.4f}"


def test_lcm_with_the_exact_consistency_function():
    """LCM with the ODE's map to sigma = 0 as its model samples N(mu, s^2) exactly."""
    def consistency(x, sigma):
        s = sigma.to(x.dtype).view(-1)
        return MU + (x - MU) * math.sqrt(VAR) / torch.sqrt(VAR + s**2)

    n = 20_000
    generator = torch.Generator().manual_seed(7)
    x = MU + math.sqrt(VAR + SIGMA_MAX**2) * torch.randn(n, generator=generator,
                                                         dtype=torch.float64)
    noise = lambda s, s_next: torch.randn(n, generator=generator, dtype=torch.float64)  # noqa: E731
    out = run_sampler(R.find_sampler("LCM").function(consistency, x,
                                                     S.karras(4, SIGMA_MIN, SIGMA_MAX).double(),
                                                     None, noise_sampler=noise))
    assert abs(float(out.mean()) - MU) < 4 * math.sqrt(VAR / n)
    assert abs(float(out.var()) - VAR) < 4 * VAR * math.sqrt(2 / n)


def mixture_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Exact D for 0.3 N(-1, 0.1^2) + 0.7 N(1.5, 0.3^2)."""
    s2 = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1))) ** 2
    weights, means, variances = (0.3, 0.7), (-1.0, 1.5), (0.01, 0.09)
    logs = torch.stack([math.log(w) - 0.5 * torch.log(v + s2) - (x - m) ** 2 / (2 * (v + s2))
                        for w, m, v in zip(weights, means, variances)])
    resp = torch.softmax(logs, dim=0)
    return sum(r * (m + v / (v + s2) * (x - m)) for r, m, v in zip(resp, means, variances))


def test_mixture_samplers_agree_and_match_moments():
    """On a Gaussian mixture, deterministic samplers agree with a fine Heun solution, and
    Euler a reproduces the mixture's mean and variance."""
    sigmas_fine = S.karras(400, 0.002, 20.0).double()
    x_t = torch.linspace(-40, 40, 16, dtype=torch.float64)
    reference = run_sampler(R.find_sampler("Heun").function(mixture_denoiser, x_t.clone(),
                                                            sigmas_fine))
    for label in ("DPM++ 2M", "UniPC", "DPM2", "Heun"):
        spec = R.find_sampler(label)
        x = run_sampler(spec.function(mixture_denoiser, x_t.clone(),
                                      S.karras(60, 0.002, 20.0).double()))
        assert float((x - reference).abs().max()) < 0.02, label
    n = 20_000
    generator = torch.Generator().manual_seed(3)
    x = 20.0 * torch.randn(n, generator=generator, dtype=torch.float64)
    noise = lambda s, s_next: torch.randn(n, generator=generator, dtype=torch.float64)  # noqa: E731
    out = run_sampler(R.find_sampler("Euler a").function(mixture_denoiser, x,
                                                         S.karras(200, 0.002, 20.0).double(),
                                                         noise_sampler=noise))
    mean = 0.3 * -1.0 + 0.7 * 1.5
    var = 0.3 * (0.01 + 1.0) + 0.7 * (0.09 + 2.25) - mean**2
    assert abs(float(out.mean()) - mean) < 4 * math.sqrt(var / n)
    assert abs(float(out.var()) - var) < 0.05 * var


ANCESTRAL = ["Euler a", "DPM2 a", "DPM++ 2S a", "DDIM", "DPM fast", "Restart", "LCM", "Euler"]
SDE = ["DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE"]


def _batch_run(label: str, seeds: list[int]) -> torch.Tensor:
    spec = R.find_sampler(label)
    x = torch.stack([torch.randn(1, 4, 4, generator=torch.Generator().manual_seed(s))
                     for s in seeds]) * 10
    sigmas = S.karras(21, SIGMA_MIN, SIGMA_MAX)
    if spec.brownian_noise:
        noise = BrownianTreeNoiseSampler(x, float(sigmas[-2]), float(sigmas[0]), seeds)
    else:
        noise = randn_noise_sampler(x, [torch.Generator().manual_seed(s + 1) for s in seeds])
    kwargs = {"eta": 1.0} if spec.eta_source else {}
    if label == "Euler":
        kwargs["s_churn"] = 1.0
    return run_sampler(spec.function(gaussian_denoiser, x, sigmas, None, noise_sampler=noise,
                                     **{**spec.fixed_kwargs, **kwargs}))


@pytest.mark.parametrize("label", ANCESTRAL + SDE)
def test_batch_equals_single_runs_and_is_reproducible(label):
    seeds = [11, 22, 33, 44]
    batch = _batch_run(label, seeds)
    singles = torch.cat([_batch_run(label, [s]) for s in seeds])
    assert torch.equal(batch, singles)
    assert torch.equal(_batch_run(label, seeds), batch)
    assert not torch.equal(_batch_run(label, [12, 22, 33, 44])[0], batch[0])


def test_generator_yields_steps_and_can_be_closed():
    gen = R.find_sampler("Heun").function(gaussian_denoiser, X_T.clone(),
                                          S.karras(5, SIGMA_MIN, SIGMA_MAX).double())
    first = next(gen)
    assert isinstance(first, SamplerStep) and first.index == 0 and first.total == 5
    assert first.sigma == pytest.approx(SIGMA_MAX) and first.x.shape == X_T.shape
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    events = []
    gen = R.find_sampler("Euler").function(gaussian_denoiser, X_T.clone(),
                                           S.karras(5, SIGMA_MIN, SIGMA_MAX).double())
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            final = stop.value
            break
    assert [e.index for e in events] == [0, 1, 2, 3, 4] and torch.equal(events[-1].x, final)
