"""Sampler/scheduler names, img2img step selection, and the CFG denoiser's arithmetic and
schedule."""

from __future__ import annotations

import pytest
import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.nn.configs import NoiseScheduleConfig
from modules.sampling import registry as R
from modules.sampling.base import run_sampler
from modules.sampling.cfg import CFGDenoiser, CFGDenoiserParams, Hooks, InpaintBlend
from modules.sampling.denoiser import Denoiser, model_sigmas

TABLE = model_sigmas(NoiseScheduleConfig())


def test_labels_and_aliases_resolve():
    assert R.resolve_sampler("k_euler_a")[0].label == "Euler a"
    assert R.resolve_sampler("k_dpmpp_2m")[0].label == "DPM++ 2M"
    assert R.resolve_sampler("Euler")[1] is R.AUTOMATIC
    assert R.resolve_sampler("DPM++ 2M SDE Heun")[0].fixed_kwargs == {"solver_type": "heun"}
    assert R.resolve_sampler("Euler", "sgmuniform")[1].label == "SGM Uniform"
    assert len(R.SAMPLERS) == 20 and R.SAMPLERS[0].label == "DPM++ 2M"


def test_legacy_combined_names():
    sampler, scheduler = R.resolve_sampler("DPM++ 2M Karras")
    assert (sampler.label, scheduler.label) == ("DPM++ 2M", "Automatic")  # Karras is its default
    sampler, scheduler = R.resolve_sampler("Euler a Karras", "Exponential")
    assert (sampler.label, scheduler.label) == ("Euler a", "Karras")
    sampler, scheduler = R.resolve_sampler("DPM++ 2M SDE Exponential")
    assert (sampler.label, scheduler.label) == ("DPM++ 2M SDE", "Automatic")
    # not "SDE" + "Heun"
    assert R.resolve_sampler("DPM++ 2M SDE Heun")[0].label == "DPM++ 2M SDE Heun"
    assert R.resolve_sampler("DPM++ 2M", "Karras")[1] is R.AUTOMATIC


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="valid samplers: DPM\\+\\+ 2M, .*Euler a.*LCM"):
        R.resolve_sampler("Eular")
    with pytest.raises(ValueError, match="valid schedulers: Automatic, Uniform, Karras"):
        R.resolve_sampler("Euler", "Karas")


def test_effective_schedule_label():
    assert R.effective_schedule_label(*R.resolve_sampler("DPM++ 2M")) == "Karras"
    assert R.effective_schedule_label(*R.resolve_sampler("Euler")) == "Automatic"
    assert R.effective_schedule_label(*R.resolve_sampler("DPM++ 3M SDE")) == "Exponential"
    assert R.effective_schedule_label(*R.resolve_sampler("Euler", "Beta")) == "Beta"


def test_compute_sigmas_defaults_and_discard():
    karras = R.compute_sigmas(*R.resolve_sampler("DPM++ 2M"), 20, TABLE)
    assert len(karras) == 21 and karras[0] == pytest.approx(14.6146, abs=1e-3) and karras[-1] == 0
    # DPM2 discards the penultimate sigma of a 21-step Karras schedule.
    full = R.compute_sigmas(R.find_sampler("Euler"), R.find_scheduler("Karras"), 21, TABLE)
    dpm2 = R.compute_sigmas(*R.resolve_sampler("DPM2"), 20, TABLE)
    assert torch.equal(dpm2, torch.cat([full[:-2], full[-1:]]))
    # A1111's DDIM grid: 20 timesteps 951 ... 1, i.e. 19 steps, no final 0.
    ddim = R.compute_sigmas(*R.resolve_sampler("DDIM"), 20, TABLE)
    assert torch.allclose(ddim, TABLE[torch.arange(951, 0, -50)])
    sampler, scheduler = R.resolve_sampler("DDIM")
    assert R.initial_noise_scale(sampler, scheduler, 2.0) == pytest.approx(5**0.5)
    assert R.final_latent_scale(*R.resolve_sampler("Euler"), 0.0) == 1.0
    assert R.prompt_schedule_steps(R.find_sampler("Heun"), 20) == 40
    assert R.prompt_schedule_steps(R.find_sampler("Euler"), 20) == 20


def test_img2img_step_rule():
    assert R.img2img_steps(20, 0.75, False) == (20, 15)
    sigmas = R.compute_sigmas(R.find_sampler("Euler"), R.AUTOMATIC, 20, TABLE)
    cut = R.img2img_sigmas(sigmas, 20, 0.75, False)
    assert len(cut) - 1 == 16 and torch.equal(cut, sigmas[4:])
    # Hires (fixed steps): 20 steps at 0.7 -> a 28-step schedule, 20 steps from sigmas[8].
    assert R.img2img_steps(20, 0.7, True) == (28, 19)
    hires = R.compute_sigmas(R.find_sampler("Euler"), R.AUTOMATIC, 28, TABLE)
    cut = R.img2img_sigmas(hires, 20, 0.7, True)
    assert len(cut) - 1 == 20 and torch.equal(cut, hires[8:])
    # Denoising 1.0 is treated as 0.999: never pure noise.
    assert R.img2img_steps(20, 1.0, False) == (20, 19)
    with pytest.raises(ValueError, match="expected a schedule of 28 steps"):
        R.img2img_sigmas(sigmas, 20, 0.7, True)


def cond(value: float, tokens: int = 77) -> Cond:
    return Cond(torch.full((tokens, 2), value))


class RecordingDenoiser:
    """D = x + mean(context): each cond's effect is visible, and calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, tuple[float, ...]]] = []

    def __call__(self, x, sigma, *, context, y=None, c_concat=None):
        self.calls.append((x.shape[0], tuple(context[:, 0, 0].tolist())))
        return x + context.mean(dim=(1, 2)).view(-1, 1, 1, 1)


def test_cfg_combines_and_parts_with_weights():
    inner = RecordingDenoiser()
    positive = MultiCond(((ScheduledCond.constant(cond(1.0)), 1.0),
                          (ScheduledCond.constant(cond(3.0)), 0.5)))
    cfg = CFGDenoiser(inner, [positive], [ScheduledCond.constant(cond(-1.0))], cfg_scale=7.0,
                      total_steps=10)
    x = torch.zeros(1, 1, 2, 2)
    out = cfg(x, torch.tensor([1.0]))
    # uncond + 1.0 * 7 * (1 - (-1)) + 0.5 * 7 * (3 - (-1)) = -1 + 14 + 14
    assert torch.allclose(out, torch.full_like(x, 27.0))
    assert inner.calls == [(3, (1.0, 3.0, -1.0))]  # one batched U-Net call


def test_cfg_separate_calls_for_different_token_lengths_and_inpaint_blend():
    inner = RecordingDenoiser()
    cfg = CFGDenoiser(inner, [MultiCond.single(ScheduledCond.constant(cond(2.0, 154)))],
                      [ScheduledCond.constant(cond(0.0))], cfg_scale=3.0, total_steps=10,
                      inpaint=InpaintBlend(torch.full((1, 1, 2, 2), 5.0),
                                           torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])))
    out = cfg(torch.zeros(1, 1, 2, 2), torch.tensor([1.0]))
    assert sorted(inner.calls) == [(1, (0.0,)), (1, (2.0,))]
    assert out.flatten().tolist() == [5.0, 6.0, 6.0, 6.0]


def test_cfg_schedule_switch_and_second_order_doubling():
    # "[a:b:5]" over a second-order sampler's doubled schedule: a for calls 0..5, then b.
    switching = ScheduledCond(((5, cond(1.0)), (1 << 31, cond(2.0))))
    inner = RecordingDenoiser()
    cfg = CFGDenoiser(inner, [MultiCond.single(switching)], [ScheduledCond.constant(cond(0.0))],
                      cfg_scale=1.0, total_steps=R.prompt_schedule_steps(R.find_sampler("Heun"), 5))
    sigmas = R.compute_sigmas(R.find_sampler("Heun"), R.find_scheduler("Karras"), 5, TABLE)
    run_sampler(R.find_sampler("Heun").function(cfg, torch.zeros(1, 1, 2, 2), sigmas))
    used = [c[1][0] for c in inner.calls]
    assert len(used) == 9  # 2 calls per step, 1 on the last step to sigma 0
    assert used == [1.0] * 6 + [2.0] * 3


def test_cfg_skip_early_ngms_and_hooks():
    inner = RecordingDenoiser()
    seen: list[int] = []

    def before(params: CFGDenoiserParams) -> None:
        seen.append(params.step)

    cfg = CFGDenoiser(inner, [MultiCond.single(ScheduledCond.constant(cond(1.0)))],
                      [ScheduledCond.constant(cond(0.0))], cfg_scale=5.0, total_steps=4,
                      skip_early_cond=0.25, s_min_uncond=0.5,
                      hooks=Hooks(before_model=[before]), record_uncond=True)
    x = torch.zeros(1, 1, 2, 2)
    # step 0: skipped uncond -> cond only
    assert torch.allclose(cfg(x, torch.tensor([2.0])), x + 1.0)
    assert torch.allclose(cfg(x, torch.tensor([2.0])), x + 1.0)  # step 1: 1/4 <= 0.25 still early
    assert torch.allclose(cfg(x, torch.tensor([0.4])), x + 5.0)  # step 2: full CFG (even step)
    assert torch.allclose(cfg.last_uncond, x)
    # step 3: NGMS (odd step, sigma < 0.5)
    assert torch.allclose(cfg(x, torch.tensor([0.4])), x + 1.0)
    assert cfg.used_skip_early_cfg and cfg.used_ngms and seen == [0, 1, 2, 3]
    assert [c[0] for c in inner.calls] == [1, 1, 2, 1]


def test_denoiser_eps_and_v_scalings():
    x, sigma = torch.randn(2, 1, 2, 2), torch.tensor([TABLE[500].item(), TABLE[20].item()])
    out = torch.randn(2, 1, 2, 2)
    timesteps = []

    def unet(x_in, t, context=None, y=None):
        timesteps.append(t.tolist())
        assert torch.allclose(x_in, x / (sigma.view(-1, 1, 1, 1) ** 2 + 1) ** 0.5)
        return out

    s = sigma.view(-1, 1, 1, 1)
    eps = Denoiser(unet, sigmas=TABLE, prediction="eps")(x, sigma, context=None)
    assert torch.allclose(eps, x - s * out)
    v = Denoiser(unet, sigmas=TABLE, prediction="v")(x, sigma, context=None)
    assert torch.allclose(v, x / (s**2 + 1) - s / (s**2 + 1) ** 0.5 * out)
    assert timesteps[0] == [500, 20]


def _vp_ddim(eps_model, x, timesteps, alphas_cumprod):
    """The timestep formulation (DDIM, eta = 0) that A1111 runs, for comparison."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], (1, 0))]
    for index in range(len(timesteps) - 1, 0, -1):
        e_t = eps_model(x, torch.full((x.shape[0],), int(timesteps[index])))
        a_t, a_prev = alphas[index].double(), alphas_prev[index].double()
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * e_t
    return x


@pytest.mark.parametrize("label", ["DDIM", "PLMS"])
def test_sigma_space_ddim_equals_timestep_formulation(label):
    alphas_cumprod = 1 / (1 + TABLE.double() ** 2)

    def eps_model(x_in, t, context=None, y=None):
        return 0.3 * x_in + 0.001 * t.double().view(-1, 1, 1, 1)

    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler, scheduler = R.resolve_sampler(label)
    sigmas = R.compute_sigmas(sampler, scheduler, 10, TABLE).double()
    x = noise * R.initial_noise_scale(sampler, scheduler, float(sigmas[0]))
    ours = run_sampler(sampler.function(Denoiser(eps_model, sigmas=TABLE), x, sigmas,
                                        {"context": None}))
    ours = ours * R.final_latent_scale(sampler, scheduler, float(sigmas[-1]))
    if label == "DDIM":
        reference = _vp_ddim(eps_model, noise, torch.arange(1, 1000, 100), alphas_cumprod)
        assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-5)
    else:
        assert ours.isfinite().all() and len(sigmas) == 10
