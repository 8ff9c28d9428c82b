"""Schedules against diffusers' schedulers (test-only reference) and the published formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler
from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

from modules.nn.configs import NoiseScheduleConfig
from modules.sampling import schedules as S
from modules.sampling.denoiser import (
    model_sigmas,
    rescale_zero_terminal_snr,
    scaled_linear_alphas_cumprod,
)

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
          num_train_timesteps=1000)
TABLE = model_sigmas(NoiseScheduleConfig())


def euler(**kwargs) -> EulerDiscreteScheduler:
    return EulerDiscreteScheduler(**SD, **kwargs)


def close(a: torch.Tensor, b, rtol: float = 1e-6, atol: float = 1e-6) -> bool:
    return torch.allclose(a.double(), torch.as_tensor(np.asarray(b), dtype=torch.float64),
                          rtol=rtol, atol=atol)


def test_model_sigmas_match_diffusers():
    reference = euler().sigmas.flip(0)[1:]  # ascending, without the appended 0
    assert TABLE.shape == (1000,)
    assert close(TABLE, reference)
    assert TABLE[0] == pytest.approx(0.0292, abs=1e-4)
    assert TABLE[-1] == pytest.approx(14.6146, abs=1e-4)


def test_uniform_matches_diffusers_on_integer_timesteps():
    scheduler = euler(timestep_spacing="linspace")
    # timesteps 999, 888, ..., 0 are integers: no interpolation ambiguity
    scheduler.set_timesteps(10)
    assert close(S.uniform(10, TABLE), scheduler.sigmas)


@pytest.mark.parametrize("steps", [5, 20, 37])
def test_karras_matches_diffusers(steps):
    scheduler = euler(use_karras_sigmas=True)
    scheduler.set_timesteps(steps)
    assert close(S.karras(steps, float(TABLE[0]), float(TABLE[-1])), scheduler.sigmas, rtol=1e-5)


@pytest.mark.parametrize("steps", [5, 20])
def test_exponential_matches_diffusers(steps):
    scheduler = euler(use_exponential_sigmas=True)
    scheduler.set_timesteps(steps)
    assert close(S.exponential(steps, float(TABLE[0]), float(TABLE[-1])), scheduler.sigmas,
                 rtol=1e-5)


@pytest.mark.parametrize("steps", [5, 20])
def test_beta_matches_diffusers(steps):
    scheduler = euler(use_beta_sigmas=True)
    scheduler.set_timesteps(steps)
    assert close(S.beta(steps, float(TABLE[0]), float(TABLE[-1])), scheduler.sigmas, rtol=1e-5)


def test_polyexponential_with_rho_1_is_exponential_and_formula():
    assert close(S.polyexponential(9, 0.03, 14.6), S.exponential(9, 0.03, 14.6))
    ramp = np.linspace(1, 0, 6) ** 2.0
    expected = np.exp(ramp * (math.log(14.6) - math.log(0.03)) + math.log(0.03))
    assert close(S.polyexponential(6, 0.03, 14.6, rho=2.0)[:-1], expected, rtol=1e-6)


def test_kl_optimal_formula_and_no_final_zero():
    sigmas = S.kl_optimal(8, 0.03, 14.6)
    assert len(sigmas) == 9
    assert sigmas[-1] == pytest.approx(0.03) and sigmas[0] == pytest.approx(14.6)
    i = 3 / 8
    expected = math.tan(i * math.atan(0.03) + (1 - i) * math.atan(14.6))
    assert float(sigmas[3]) == pytest.approx(expected, rel=1e-6)


def test_align_your_steps_table_and_loglinear_interpolation():
    assert close(S.align_your_steps(11)[:-1], S.AYS_SD1)
    assert close(S.align_your_steps(11, is_sdxl=True)[:-1], S.AYS_SDXL)
    # 21 points: every other one is a table entry, the others their geometric means.
    sigmas = S.align_your_steps(21)
    assert len(sigmas) == 22 and sigmas[-1] == 0
    assert close(sigmas[0:-1:2], S.AYS_SD1, rtol=1e-6)
    assert float(sigmas[1]) == pytest.approx(math.sqrt(S.AYS_SD1[0] * S.AYS_SD1[1]), rel=1e-6)


def test_sgm_uniform_and_normal():
    # 999 / 9 = 111: the SGM grid lands on table entries 999, 888, ..., 111.
    assert close(S.sgm_uniform(9, float(TABLE[0]), float(TABLE[-1]), TABLE)[:-1],
                 TABLE[999 - 111 * np.arange(9)])
    assert close(S.normal(10, float(TABLE[0]), float(TABLE[-1]), TABLE), S.uniform(10, TABLE))


def test_simple_and_ddim_schedulers():
    assert close(S.simple(10, TABLE)[:-1], TABLE[[-(1 + 100 * k) for k in range(10)]])
    assert close(S.ddim(10, TABLE)[:-1], TABLE[1::100].flip(0))
    assert len(S.ddim(7, TABLE)) == 9  # 1000 // 7 = 142 gives 8 sigmas, as A1111's does


def test_timestep_grid_matches_diffusers_ddim_leading_offset_1():
    scheduler = DDIMScheduler(**SD, steps_offset=1, timestep_spacing="leading")
    scheduler.set_timesteps(20)
    assert scheduler.timesteps.tolist() == list(range(951, 0, -50))
    alphas = scheduler.alphas_cumprod[scheduler.timesteps]
    assert close(S.timesteps(20, TABLE), ((1 - alphas) / alphas) ** 0.5)


def test_unipc_time_uniform_on_knots():
    # 999 / 9 = 111: UniPC's continuous times land on timesteps 999, 888, ..., 0.
    assert close(S.unipc_time_uniform(9, TABLE), TABLE[999 - 111 * np.arange(10)], rtol=1e-5)


def test_zero_terminal_snr_matches_diffusers():
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    reference = torch.cumprod(1 - diffusers_rescale(betas), 0)
    ours = rescale_zero_terminal_snr(scaled_linear_alphas_cumprod(NoiseScheduleConfig()))
    assert close(ours[:-1], reference[:-1], rtol=1e-5, atol=1e-7)
    assert 0 < float(ours[-1]) < 1e-7


def test_sigma_t_round_trip():
    t = torch.tensor([0.0, 10.5, 500.25, 999.0])
    sigma = S.t_to_sigma(t, TABLE)
    assert [S.sigma_to_t(float(s), TABLE) for s in sigma] == pytest.approx(t.tolist(), abs=1e-3)
    assert S.sigma_to_t(float(TABLE[400]) * 1.0001, TABLE, quantize=True) == 400
