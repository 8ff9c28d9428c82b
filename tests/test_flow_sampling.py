"""Rectified-flow sampling against diffusers' `FlowMatchEulerDiscreteScheduler`.

- Sigmas: SD3's fixed shift 3.0 and Flux dev's resolution shift (use_dynamic_shifting,
  base/max shift 0.5/1.15, base/max image seq len 256/4096) equal the scheduler's
  `set_timesteps` for several step counts and sizes; Flux's pipeline sigmas
  (shift(linspace(1, 1/n, n))) and our Simple schedule on the Flux table equal them when
  n divides 1000; Normal on SD3 equals the scheduler's default. Tolerance: atol 1e-6.
- Euler on `FlowDenoiser` (through `CFGDenoiser`, real CFG) equals the scheduler's step
  loop on a toy velocity field: atol 1e-5 (x - D recomputes sigma * v in float32).
- Every A1111 schedule label gives a decreasing schedule ending in 0 on a flow table;
  Automatic is Simple, or the sampler's default scheduler where it has one (DPM++ 2M:
  Karras); SD1 schedules are untouched by the flow options.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.nn.configs import FLUX_DEV_FLOW, FLUX_SCHNELL_FLOW, SD3_FLOW, NoiseScheduleConfig
from modules.sampling import flow as FL
from modules.sampling import registry as R
from modules.sampling.base import run_sampler
from modules.sampling.cfg import CFGDenoiser
from modules.sampling.denoiser import model_sigmas
from modules.sampling.samplers_euler import sample_euler

ATOL = 1e-6
STEPS = (1, 4, 20, 28, 50)
SIZES = ((256, 256), (512, 512), (1024, 1024), (832, 1216), (2048, 2048))


def _scheduler(**kwargs):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**kwargs)


def _dynamic():
    return _scheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                      base_image_seq_len=256, max_image_seq_len=4096)


def _diffusers_mu(width: int, height: int) -> float:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    # FluxPipeline: latents 2 * (side // 16) high and wide, packed in 2x2 patches.
    seq_len = (2 * (height // 16) // 2) * (2 * (width // 16) // 2)
    return calculate_shift(seq_len, 256, 4096, 0.5, 1.15)


def _close(ours: torch.Tensor, reference: torch.Tensor) -> None:
    assert ours.shape == reference.shape
    assert torch.allclose(ours.float(), reference.float(), atol=ATOL, rtol=0), (ours, reference)


@pytest.mark.parametrize("steps", STEPS)
def test_sd3_sigmas_match_scheduler_with_shift_3(steps) -> None:
    scheduler = _scheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    flow = FL.flow_schedule(SD3_FLOW)
    _close(FL.flow_match_sigmas(steps, flow), scheduler.sigmas)
    # The network's timestep is sigma * 1000, as StableDiffusion3Pipeline passes it.
    denoiser = FL.FlowDenoiser(None, sigmas=flow.table(), timestep_scale=SD3_FLOW.timestep_scale)
    assert torch.allclose(denoiser.timestep(scheduler.sigmas[:-1]), scheduler.timesteps)
    # Normal (uniform in timestep through the shift) is the scheduler's default spacing.
    normal = R.compute_sigmas(R.find_sampler("Euler"), R.find_scheduler("Normal"), steps,
                              flow.table(), R.ScheduleOptions(flow=flow))
    _close(normal, scheduler.sigmas)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("steps", STEPS)
def test_flux_dev_sigmas_match_dynamic_shifting(steps, size) -> None:
    width, height = size
    flow = FL.flow_schedule(FLUX_DEV_FLOW, width, height)
    assert math.isclose(flow.mu, _diffusers_mu(width, height), abs_tol=1e-12)
    scheduler = _dynamic()
    scheduler.set_timesteps(steps, mu=flow.mu)
    _close(FL.flow_match_sigmas(steps, flow), scheduler.sigmas)
    # FluxPipeline passes its own sigmas: linspace(1, 1/n, n), then shifted.
    scheduler = _dynamic()
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=flow.mu)
    _close(FL.flux_pipeline_sigmas(steps, flow), scheduler.sigmas)
    if 1000 % steps == 0:  # Simple indexes the table at exactly those times
        simple = R.compute_sigmas(R.find_sampler("Euler"), R.AUTOMATIC, steps, flow.table(),
                                  R.ScheduleOptions(flow=flow))
        _close(simple, scheduler.sigmas)


def test_schnell_has_no_shift() -> None:
    flow = FL.flow_schedule(FLUX_SCHNELL_FLOW, 1024, 1024)
    assert flow.mu is None and flow.shift == 1.0
    table = flow.table()
    _close(table, torch.arange(1, 1001) / 1000)
    sigmas = R.compute_sigmas(R.find_sampler("Euler"), R.AUTOMATIC, 4, table,
                              R.ScheduleOptions(flow=flow))
    _close(sigmas, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))


class ToyVelocity:
    """v(x, t) depending on x, the timestep and the text: enough to tell steps apart."""

    def __call__(self, x, timestep, *, context, y=None):
        t = timestep.float().view(-1, 1, 1, 1)
        return torch.tanh(x) * (0.5 + t / 1000) - 0.3 * x + context.mean(dim=(1, 2)).view(
            -1, 1, 1, 1)


def test_euler_with_cfg_matches_scheduler_step_loop() -> None:
    steps, cfg_scale = 12, 4.5
    flow = FL.flow_schedule(SD3_FLOW)
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    positive, negative = torch.full((1, 8, 6), 0.4), torch.full((1, 8, 6), -0.2)
    model = ToyVelocity()
    # diffusers' loop: real CFG on the velocity, then scheduler.step.
    scheduler = _scheduler(shift=3.0)
    scheduler.set_timesteps(steps)
    x = noise.clone()
    for t in scheduler.timesteps:
        timestep = t.expand(1)
        v_uncond = model(x, timestep, context=negative)
        v_cond = model(x, timestep, context=positive)
        x = scheduler.step(v_uncond + cfg_scale * (v_cond - v_uncond), t, x).prev_sample
    # Ours: Euler on CFG over the flow denoiser, from x = noise at sigma 1.
    denoiser = FL.FlowDenoiser(model, sigmas=flow.table(), timestep_scale=1000.0)
    cfg = CFGDenoiser(denoiser, [MultiCond.single(ScheduledCond.constant(Cond(positive[0])))],
                      [ScheduledCond.constant(Cond(negative[0]))], cfg_scale=cfg_scale,
                      total_steps=steps)
    sigmas = FL.flow_match_sigmas(steps, flow)
    euler = R.find_sampler("Euler")
    start = noise * R.initial_noise_scale(euler, R.AUTOMATIC, float(sigmas[0]), flow=True)
    ours = run_sampler(sample_euler(cfg, start, sigmas))
    assert torch.allclose(ours, x, atol=1e-5, rtol=0), (ours - x).abs().max()


@pytest.mark.parametrize("sampler", [spec.label for spec in R.SAMPLERS])
def test_every_sampler_runs_on_the_flow_denoiser(sampler) -> None:
    """Interface check: each sampler drives CFG over `FlowDenoiser` to a finite latent.
    (The noise of ancestral / SDE samplers on flow models: tests/test_flow_ancestral.py.)"""
    spec = R.find_sampler(sampler)
    flow = FL.flow_schedule(FLUX_DEV_FLOW, 512, 512)
    context = torch.full((1, 8, 6), 0.4)
    cfg = CFGDenoiser(FL.FlowDenoiser(ToyVelocity(), sigmas=flow.table(), timestep_scale=1.0),
                      [MultiCond.single(ScheduledCond.constant(Cond(context[0])))],
                      [ScheduledCond.constant(Cond(-context[0]))], cfg_scale=3.0,
                      total_steps=R.prompt_schedule_steps(spec, 6),
                      cfg_scale_multiplier=spec.cfg_scale_multiplier,
                      record_uncond=spec.record_uncond)
    sigmas = R.compute_sigmas(spec, R.AUTOMATIC, 6, flow.table(), R.ScheduleOptions(flow=flow))
    x = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(3))
    noise = R.default_noise_sampler(spec, x, sigmas, generators=None, seeds=[3])
    out = run_sampler(R.start_sampler(spec, cfg, x, sigmas, noise_sampler=noise))
    assert out.shape == x.shape and bool(torch.isfinite(out).all())


def test_flux_timestep_is_sigma_and_img2img_start_matches_scale_noise() -> None:
    flow = FL.flow_schedule(FLUX_DEV_FLOW, 512, 512)
    seen = []
    denoiser = FL.FlowDenoiser(lambda x, t, **kw: seen.append(t) or torch.zeros_like(x),
                               sigmas=flow.table(), timestep_scale=FLUX_DEV_FLOW.timestep_scale)
    x = torch.ones(2, 16, 2, 2)
    sigma = torch.tensor([0.7, 0.7])
    assert torch.equal(denoiser(x, sigma, context=torch.zeros(2, 3, 4)), x)
    assert torch.equal(seen[0], sigma)
    # img2img: (1 - sigma) * init + sigma * noise, diffusers' scale_noise.
    scheduler = _dynamic()
    scheduler.set_timesteps(10, mu=flow.mu)
    init = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(1, 16, 4, 4, generator=torch.Generator().manual_seed(2))
    t = scheduler.timesteps[3:4]
    expected = scheduler.scale_noise(init, t, noise)
    assert torch.allclose(FL.noised(init, noise, float(scheduler.sigmas[3])), expected,
                          atol=1e-6)
    assert torch.allclose(FL.noised(init, noise, scheduler.sigmas[3:4]), expected, atol=1e-6)


LABELS = ("Automatic", "Simple", "Normal", "SGM Uniform", "Beta", "Karras", "Uniform",
          "Exponential", "Polyexponential", "DDIM")


@pytest.mark.parametrize("config", [SD3_FLOW, FLUX_DEV_FLOW, FLUX_SCHNELL_FLOW],
                         ids=["sd3", "flux_dev", "flux_schnell"])
@pytest.mark.parametrize("label", LABELS)
def test_every_label_decreases_to_zero(label, config) -> None:
    flow = FL.flow_schedule(config, 1024, 768)
    options = R.ScheduleOptions(flow=flow)
    for sampler in ("Euler", "DPM++ 2M", "DDIM", "DPM2"):
        for steps in (3, 20):
            sigmas = R.compute_sigmas(R.find_sampler(sampler), R.find_scheduler(label), steps,
                                      flow.table(), options)
            assert sigmas[-1] == 0 and float(sigmas[0]) <= 1.0 + 1e-6
            assert bool((sigmas[1:] < sigmas[:-1]).all()), (sampler, label, sigmas)
            if label != "DDIM":
                assert len(sigmas) == steps + 1
    # Automatic: the sampler's default (so "DPM++ 2M Karras" stays Karras), else Simple.
    def sigmas(sampler: str, label: str) -> torch.Tensor:
        return R.compute_sigmas(*R.resolve_sampler(sampler, label), 9, flow.table(), options)

    assert torch.equal(sigmas("Euler", "Automatic"), sigmas("Euler", "Simple"))
    assert torch.equal(sigmas("DPM++ 2M", "Automatic"), sigmas("Euler", "Karras"))
    assert torch.equal(sigmas("DPM++ 2M Karras", "Automatic"), sigmas("Euler", "Karras"))


def test_align_your_steps_is_refused_for_flow() -> None:
    options = R.ScheduleOptions(flow=FL.flow_schedule(SD3_FLOW))
    with pytest.raises(ValueError, match="flow"):
        R.compute_sigmas(R.find_sampler("Euler"), R.find_scheduler("Align Your Steps"), 10,
                         options.flow.table(), options)


def test_sd1_is_untouched_and_noise_scales() -> None:
    table = model_sigmas(NoiseScheduleConfig())
    ddim, automatic = R.find_sampler("DDIM"), R.AUTOMATIC
    sigmas = R.compute_sigmas(ddim, automatic, 10, table)
    assert sigmas[-1] > 0  # A1111's DDIM grid, not a flow schedule
    assert R.initial_noise_scale(ddim, automatic, 14.6) == math.sqrt(14.6**2 + 1)
    assert R.initial_noise_scale(ddim, automatic, 1.0, flow=True) == 1.0
    assert R.final_latent_scale(ddim, automatic, 0.5, flow=True) == 1.0
    karras = R.compute_sigmas(R.find_sampler("DPM++ 2M"), automatic, 10, table)
    assert math.isclose(float(karras[0]), float(table[-1]), rel_tol=1e-6)
