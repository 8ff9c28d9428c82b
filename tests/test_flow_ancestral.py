"""Ancestral / SDE / Restart / LCM samplers add their noise right on flow models.

The proof is a marginal test on a 1-D Gaussian data distribution N(MU, S^2), for which the
perfect denoiser E[x0 | x_sigma] is known in closed form both for the flow path
x = (1 - sigma) x0 + sigma eps and for the VE path x = x0 + sigma eps. Sampling
N = 20 000 points from pure noise must end with mean MU and std S: within 0.015 (about
4 standard errors of the mean) and, for the std, 0.01 (4 standard errors) for the
second-order samplers and 0.025 for the first-order ones (Euler a, DDIM eta, DPM++ SDE,
Euler churn), whose discretisation leaves up to 0.015 at 250 steps in either
parameterisation (it shrinks as 1/steps). The VE formula used on a flow model is off
by 0.45+ in the mean (negative controls). The noise step itself is checked analytically
(`renoise.py`), and eta = 0 must give the deterministic solver bit for bit. Oracle: LCM
on a flow model equals diffusers' `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)`
(atol 1e-5, float32).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.sampling import flow as FL
from modules.sampling import registry as R
from modules.sampling.base import run_sampler
from modules.sampling.cfg import CFGDenoiser
from modules.sampling.renoise import ancestral, flow_churn, flow_sigma_down, raise_noise
from modules.sampling.samplers_dpmpp import sample_dpmpp_2m
from modules.sampling.samplers_euler import sample_dpm_2, sample_euler
from modules.sampling.samplers_extra import restart_segments

MU, S, N = 0.7, 0.5, 20_000
STEPS = 250
MEAN_TOL, STD_TOL = 0.015, 0.025


def _alpha(sigma: float | torch.Tensor, flow: bool):
    return 1 - sigma if flow else sigma * 0 + 1


def _marginal(sigma: float, flow: bool) -> tuple[float, float]:
    """Mean and variance of x_sigma for data N(MU, S^2)."""
    a = _alpha(sigma, flow)
    return a * MU, a**2 * S**2 + sigma**2


class GaussianDenoiser:
    """The perfect D(x, sigma) = E[x0 | x_sigma] for N(MU, S^2) data, or (`consistency`)
    the probability-flow ODE's end point, which maps x_sigma's marginal onto N(MU, S^2)."""

    def __init__(self, *, flow: bool, consistency: bool = False) -> None:
        self.is_flow, self.consistency = flow, consistency

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, **_) -> torch.Tensor:
        s = sigma.double().view(-1, 1)
        a = _alpha(s, self.is_flow)
        var = a**2 * S**2 + s**2
        gain = S / var.sqrt() if self.consistency else a * S**2 / var
        return (MU + gain * (x.double() - a * MU)).to(x.dtype)


def _sigmas(flow: bool, steps: int = STEPS) -> torch.Tensor:
    """SD3's shifted schedule from 1 (flow) or a log-uniform VE one from 30, with a final 0."""
    if flow:
        t = torch.linspace(1, 0, steps + 1, dtype=torch.float64)[:-1]
        sigmas = FL.FlowSchedule(shift=3.0).apply(t)
    else:
        sigmas = torch.linspace(math.log(30), math.log(0.003), steps, dtype=torch.float64).exp()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _sample(label: str, *, model_flow: bool, flow: bool, sigmas: torch.Tensor,
            consistency: bool = False, **kwargs) -> torch.Tensor:
    """N samples from the exact marginal at sigmas[0] (pure noise for flow models)."""
    spec = R.find_sampler(label)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(N, 1, generator=gen, dtype=torch.float64)
    mean, var = _marginal(float(sigmas[0]), model_flow)
    x = mean + math.sqrt(var) * z

    def noise(sigma: float, sigma_next: float) -> torch.Tensor:
        return torch.randn(N, 1, generator=gen, dtype=torch.float64)

    model = GaussianDenoiser(flow=model_flow, consistency=consistency)
    kwargs = {**spec.fixed_kwargs, **kwargs}
    return run_sampler(spec.function(model, x, sigmas, noise_sampler=noise, flow=flow, **kwargs))


def _assert_data(out: torch.Tensor, mean: float = MU, std: float = S,
                 std_tol: float = STD_TOL) -> None:
    assert abs(float(out.mean()) - mean) < MEAN_TOL, float(out.mean())
    assert abs(float(out.std()) - std) < std_tol, float(out.std())


PAIRS = [(1.0, 0.9), (0.9, 0.5), (0.5, 0.49), (0.3, 0.05), (0.05, 0.001)]


@pytest.mark.parametrize("flow", [True, False])
def test_renoise_gives_the_exact_marginal(flow) -> None:
    """Analytic: after the ODE to sigma_down (which keeps marginals), the re-noising
    lands exactly on sigma_next's marginal for every eta; also raising sigma (Restart)."""
    for sigma, sigma_next in PAIRS:
        for eta in (0.0, 0.3, 1.0):
            step = ancestral(sigma, sigma_next, eta, flow=flow)
            assert 0 <= step.sigma_down <= sigma_next
            mean, var = _marginal(step.sigma_down, flow)
            target_mean, target_var = _marginal(sigma_next, flow)
            assert step.scale * mean == pytest.approx(target_mean, abs=1e-12)
            assert step.scale**2 * var + step.std**2 == pytest.approx(target_var, abs=1e-12)
        up = raise_noise(sigma_next, sigma, flow=flow)
        mean, var = _marginal(sigma_next, flow)
        assert up.scale * mean == pytest.approx(_marginal(sigma, flow)[0], abs=1e-12)
        assert up.scale**2 * var + up.std**2 == pytest.approx(_marginal(sigma, flow)[1], abs=1e-12)


def test_flow_split_eta_zero_and_one_and_the_ve_formula_misses() -> None:
    assert ancestral(0.8, 0.6, 0.0, flow=True) == ancestral(0.8, 0.6, 0.0, flow=False)
    assert ancestral(0.8, 0.6, 0.0, flow=True).std == 0.0
    # eta = 1: DDPM's sigma_down = sigma_next^2 / sigma; the fresh noise scales x down.
    assert flow_sigma_down(0.8, 0.6, 1.0) == pytest.approx(0.6**2 / 0.8)
    step = ancestral(0.8, 0.6, 1.0, flow=True)
    assert step.scale == pytest.approx(0.4 / (1 - 0.45))
    # The VE noise on the flow marginal leaves too much signal in x.
    ve = ancestral(0.8, 0.6, 1.0, flow=False)
    assert ve.scale * _marginal(ve.sigma_down, True)[0] > _marginal(0.6, True)[0] + 0.05


ANCESTRAL = [("Euler a", {"eta": 1.0}), ("DPM2 a", {"eta": 1.0}), ("DPM++ 2S a", {"eta": 1.0}),
             ("DPM++ SDE", {"eta": 1.0}), ("DPM++ 2M SDE", {"eta": 1.0}),
             ("DPM++ 2M SDE Heun", {"eta": 1.0}), ("DPM++ 3M SDE", {"eta": 1.0}),
             ("Restart", {}), ("DDIM", {"eta": 1.0}), ("Euler a", {"eta": 0.5}),
             ("Euler", {"s_churn": 10.0}), ("Heun", {"s_churn": 10.0})]
FIRST_ORDER = ("Euler a", "DDIM", "DPM++ SDE", "Euler")


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "ve"])
@pytest.mark.parametrize(("label", "kwargs"), ANCESTRAL,
                         ids=[f"{label}-{kw}" for label, kw in ANCESTRAL])
def test_stochastic_samplers_reach_the_data_distribution(label, kwargs, flow) -> None:
    out = _sample(label, model_flow=flow, flow=flow, sigmas=_sigmas(flow), **kwargs)
    _assert_data(out, std_tol=STD_TOL if label in FIRST_ORDER else 0.01)


@pytest.mark.parametrize("label", ["Euler a", "DPM++ 2M SDE", "Restart"])
def test_ve_noise_on_a_flow_model_misses_the_distribution(label) -> None:
    """Negative control: the old behaviour (flow=False on a flow model) is far off."""
    kwargs = {} if label == "Restart" else {"eta": 1.0}
    out = _sample(label, model_flow=True, flow=False, sigmas=_sigmas(True), **kwargs)
    assert abs(float(out.mean()) - MU) > 0.1 or abs(float(out.std()) - S) > 0.05


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "ve"])
def test_lcm_with_a_consistency_model_is_exact(flow) -> None:
    """With the exact consistency function every LCM step lands on the right marginal,
    so 4 steps give N(MU, S^2) within sampling error (std: 4 standard errors)."""
    sigmas = _sigmas(flow, steps=4)
    out = _sample("LCM", model_flow=flow, flow=flow, sigmas=sigmas, consistency=True)
    _assert_data(out, std_tol=0.01)
    if flow:
        wrong = _sample("LCM", model_flow=True, flow=False, sigmas=sigmas, consistency=True)
        assert abs(float(wrong.mean()) - MU) > 0.1


@pytest.mark.parametrize("label", ["DPM fast", "DPM adaptive"])
@pytest.mark.parametrize("flow", [True, False], ids=["flow", "ve"])
def test_dpm_fast_and_adaptive_ancestral_end_on_the_marginal_at_sigma_min(label, flow) -> None:
    """They stop at the schedule's smallest sigma: its marginal, not the data's."""
    sigmas = _sigmas(flow, steps=60)
    out = _sample(label, model_flow=flow, flow=flow, sigmas=sigmas, eta=1.0)
    mean, var = _marginal(float(sigmas[-2]), flow)  # the smallest non-zero sigma
    _assert_data(out, mean=mean, std=math.sqrt(var))


ETA_SAMPLERS = ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE",
                "DDIM", "DPM fast", "DPM adaptive"]


@pytest.mark.parametrize("label", ETA_SAMPLERS)
def test_eta_zero_is_the_deterministic_solver_bit_for_bit(label) -> None:
    sigmas = _sigmas(True, steps=12)
    sigmas[-2] = 0.02
    flow = _sample(label, model_flow=True, flow=True, sigmas=sigmas, eta=0.0)
    plain = _sample(label, model_flow=True, flow=False, sigmas=sigmas, eta=0.0)
    assert torch.equal(flow, plain)


def test_eta_zero_equals_the_plain_solvers() -> None:
    sigmas = _sigmas(True, steps=12)
    x = torch.randn(64, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    model = GaussianDenoiser(flow=True)
    for ancestral_label, plain in (("Euler a", sample_euler), ("DPM2 a", sample_dpm_2)):
        fn = R.find_sampler(ancestral_label).function
        ours = run_sampler(fn(model, x, sigmas, eta=0.0, flow=True,
                              noise_sampler=lambda a, b: torch.randn_like(x)))
        assert torch.equal(ours, run_sampler(plain(model, x, sigmas)))
    sde = run_sampler(R.find_sampler("DPM++ 2M SDE").function(model, x, sigmas, eta=0.0, flow=True))
    assert torch.allclose(sde, run_sampler(sample_dpmpp_2m(model, x, sigmas)), atol=1e-12, rtol=0)


def test_flow_churn_caps_sigma_hat_at_one() -> None:
    x = torch.ones(2, 1)
    out, sigma_hat = flow_churn(x, 1.0, 0.4, 1.0, lambda a, b: torch.ones(2, 1), 0.9)
    assert sigma_hat == 1.0 and torch.equal(out, x)
    out, sigma_hat = flow_churn(x, 0.5, 0.4, 1.0, lambda a, b: torch.zeros(2, 1), 0.4)
    assert sigma_hat == pytest.approx(0.7) and torch.allclose(out, x * 0.3 / 0.5)


def test_restart_default_plan_for_flow_models_keeps_the_snr_range() -> None:
    sigmas = _sigmas(True, steps=24).tolist()
    pairs = restart_segments(sigmas, None, flow=True)
    jumps = [(a, b) for (_, a), (b, _) in zip(pairs, pairs[1:]) if b > a]
    assert len(jumps) == 1
    low, high = jumps[0]
    # VE sigma 0.1 -> 2 at equal SNR is 0.091 -> 0.667 (the nearest schedule points).
    assert 0.07 < low < 0.13 and 0.55 < high < 0.75


class _Recorder:
    def __init__(self) -> None:
        self.kwargs: dict = {}

    def __call__(self, model, x, sigmas, extra_args=None, **kwargs):
        self.kwargs = kwargs
        return iter(())


def test_start_sampler_reads_is_flow_from_the_cfg_denoiser() -> None:
    record = _Recorder()
    spec = replace(R.find_sampler("Euler a"), function=record)
    table = FL.FlowSchedule(shift=3.0).table()
    context = torch.zeros(4, 3)
    conds = [MultiCond.single(ScheduledCond.constant(Cond(context)))]
    uncond = [ScheduledCond.constant(Cond(context))]
    flow_cfg = CFGDenoiser(FL.FlowDenoiser(lambda x, t, **kw: x, sigmas=table), conds, uncond,
                           cfg_scale=1.0, total_steps=4)
    x, sigmas = torch.zeros(1, 1), torch.tensor([1.0, 0.0])
    R.start_sampler(spec, flow_cfg, x, sigmas)
    assert record.kwargs["flow"] is True and record.kwargs["eta"] == 1.0
    ve_cfg = CFGDenoiser(lambda x, s, **kw: x, conds, uncond, cfg_scale=1.0, total_steps=4)
    R.start_sampler(spec, ve_cfg, x, sigmas)
    assert "flow" not in record.kwargs  # SD1/SDXL: exactly the old keyword arguments
    R.start_sampler(spec, flow_cfg, x, sigmas, flow=False)
    assert "flow" not in record.kwargs


def test_flow_lcm_equals_diffusers_stochastic_flow_match_euler() -> None:
    """Oracle: diffusers' `FlowMatchEulerDiscreteScheduler(stochastic_sampling=True)` steps
    x <- (1 - sigma_next) * x0 + sigma_next * noise, our LCM on a flow model; same toy
    velocity, same noise draws, float32: atol 1e-5 (x - D recomputes sigma * v)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, stochastic_sampling=True)
    scheduler.set_timesteps(6)

    def velocity(x, t, **_):
        return torch.tanh(x) * (1 + t.view(-1, 1, 1, 1) / 1000) - 0.3

    x0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(2)
    x = x0.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(velocity(x, t.view(1)), t, x, generator=gen).prev_sample
    ours_gen = torch.Generator().manual_seed(2)
    denoiser = FL.FlowDenoiser(velocity, sigmas=FL.FlowSchedule(shift=3.0).table())
    ours = run_sampler(R.find_sampler("LCM").function(
        lambda x, s: denoiser(x, s, context=None), x0.clone(), scheduler.sigmas, flow=True,
        noise_sampler=lambda a, b: torch.randn(1, 4, 3, 3, generator=ours_gen)))
    assert torch.allclose(ours, x, atol=1e-5, rtol=0), (ours - x).abs().max()
