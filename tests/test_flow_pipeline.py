"""The batch sampler takes the flow path for rectified-flow families (SD3, Flux.1).

`modules.pipeline.sample`: the shift is computed at the batch's image size (from the
request for txt2img, from the init latent for img2img / hires), the first noise is not
rescaled (x = noise at sigma 1, also with the SGM noise multiplier on), the denoiser is a
`FlowDenoiser` with the family's timestep convention, and previews use 16-channel factors.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from modules.nn.configs import FLUX_DEV_FLOW, FLUX_VAE, SD3_FLOW, SD3_VAE
from modules.pipeline import sample as PS
from modules.sampling import flow as FL
from modules.sampling import registry as R
from modules.settings import Settings


def _plan(flow, vae, width=512, height=768):
    family = SimpleNamespace(is_flow=True, flow=flow, vae=vae, is_sdxl=False)
    seen = []

    def velocity(x, timesteps, context, y, cancel=None):
        seen.append(timesteps)
        return torch.zeros_like(x)

    loaded = SimpleNamespace(family=family, sigmas=FL.flow_schedule(flow).table())
    params = SimpleNamespace(width=width, height=height, steps=8)
    return SimpleNamespace(loaded=loaded, params=params,
                           sampler=R.find_sampler("DDIM"), scheduler=R.AUTOMATIC,
                           networks=SimpleNamespace(unet=velocity), cancel=None,
                           token_merging=0.0), seen


def test_shift_follows_the_batch_size() -> None:
    plan, _ = _plan(FLUX_DEV_FLOW, FLUX_VAE)
    expected = FL.flow_schedule(FLUX_DEV_FLOW, 512, 768)
    assert PS.flow_schedule_options(plan, None, R.ScheduleOptions()).flow == expected
    start = SimpleNamespace(init_latent=torch.zeros(1, 16, 96, 64))
    assert PS.flow_schedule_options(plan, start, R.ScheduleOptions()).flow == expected
    sigmas = PS.batch_sigmas(SimpleNamespace(**vars(plan), settings=Settings()), None, "cpu")
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0  # Automatic = Simple, no grid


def test_first_noise_is_not_rescaled() -> None:
    plan, _ = _plan(SD3_FLOW, SD3_VAE)
    settings = Settings().with_overrides({"sgm_noise_multiplier": True})
    assert PS.initial_scale(plan, 1.0, settings) == 1.0


def test_denoiser_is_a_flow_denoiser_with_the_family_timestep() -> None:
    for flow, vae, scale in ((SD3_FLOW, SD3_VAE, 1000.0), (FLUX_DEV_FLOW, FLUX_VAE, 1.0)):
        plan, seen = _plan(flow, vae)
        denoiser = PS.make_denoiser(plan, "cpu")
        assert isinstance(denoiser, FL.FlowDenoiser)
        x = torch.ones(1, 16, 2, 2)
        out = denoiser(x, torch.tensor([0.5]), context=torch.zeros(1, 4, 8), y=torch.zeros(1, 8))
        assert torch.equal(out, x) and float(seen[0][0]) == 0.5 * scale
