"""PAG and SAG against diffusers' own pipelines, whole runs on tiny U-Nets.

diffusers' `StableDiffusionPAGPipeline`, `StableDiffusionXLPAGPipeline` and
`StableDiffusionSAGPipeline` run with a DDIM scheduler (leading spacing, offset 1, no
clipping: A1111's DDIM grid), `output_type="latent"`, the given prompt embeddings and
initial latents; ours runs `CFGDenoiser` + the tool's hooks + our "DDIM" sampler over our
U-Net loaded with the same weights (`tests/test_unet_parity.py`'s `_pair`), starting
from the same latents in our VE parameterisation (x = latents * sqrt(1 + sigma_0^2)).
Tolerance: max |ours - diffusers| <= 3e-5 * max |diffusers| (float32 rounding through
four steps with extra passes; measured 1.3e-6 to 6.5e-6). Each case also checks that the
tool moved the result by far more than that, so a wrong sign or scale fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.nn.configs import NoiseScheduleConfig
from modules.nn.timestep import timestep_embedding
from modules.sampling import schedules as S
from modules.sampling.cfg import CFGDenoiser, Hooks
from modules.sampling.denoiser import Denoiser, model_sigmas
from modules.sampling.guidance_pag import add_pag, parse_layers
from modules.sampling.guidance_sag import add_sag
from modules.sampling.samplers_timestep import sample_ddim
from tests.diffusers_configs import ADM_TIME_EMBED_DIM, vae_diffusers_config
from tests.helpers.parity import assert_close
from tests.test_unet_parity import _pair
from tests.tiny import TINY_SD15, TINY_SDXL

TOLERANCE = 3e-5
STEPS = 4
TABLE = model_sigmas(NoiseScheduleConfig())
TIME_IDS = torch.tensor([[64.0, 48.0, 0.0, 8.0, 64.0, 48.0]])


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
                         clip_sample=False, set_alpha_to_one=True)


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**vae_diffusers_config(TINY_SD15.vae))


def _inputs(family, seed: int = 3, size: int = 8):
    g = torch.Generator().manual_seed(seed)
    cfg = family.unet
    latents = torch.randn(1, cfg.in_channels, size, size, generator=g)
    cond = torch.randn(1, 77, cfg.context_dim, generator=g)
    uncond = torch.randn(1, 77, cfg.context_dim, generator=g)
    pooled = neg_pooled = None
    if cfg.adm_in_channels is not None:
        width = cfg.adm_in_channels - 6 * ADM_TIME_EMBED_DIM
        pooled = torch.randn(1, width, generator=g)
        neg_pooled = torch.randn(1, width, generator=g)
    return latents, cond, uncond, pooled, neg_pooled


def _adm(pooled):
    if pooled is None:
        return None
    fourier = timestep_embedding(TIME_IDS.flatten(), ADM_TIME_EMBED_DIM).reshape(1, -1)
    return torch.cat([pooled, fourier], dim=-1)[0]


def _ours(unet, latents, cond, uncond, cfg_scale, add, pooled=None, neg_pooled=None):
    """Our DDIM run with the hooks `add(hooks, denoiser)` installs."""
    sigmas = torch.cat([S.timesteps(STEPS, TABLE), torch.zeros(1)])
    denoiser = Denoiser(unet, sigmas=TABLE)
    hooks = Hooks()
    add(hooks, denoiser)
    positive = MultiCond.single(ScheduledCond.constant(Cond(cond[0], _adm(pooled))))
    negative = ScheduledCond.constant(Cond(uncond[0], _adm(neg_pooled)))
    model = CFGDenoiser(denoiser, [positive], [negative], cfg_scale, total_steps=STEPS,
                        hooks=hooks)
    x = latents * math.sqrt(1 + float(sigmas[0]) ** 2)
    generator = sample_ddim(model, x, sigmas)
    with torch.no_grad():
        try:
            while True:
                next(generator)
        except StopIteration as stop:
            return stop.value


def _pag_adder(family, scale, adaptive, layers):
    def add(hooks, denoiser):
        add_pag(hooks, scale=scale, adaptive=adaptive, patterns=parse_layers(layers),
                config=family.unet, sigma_to_t=denoiser.sigma_to_t)
    return add


@pytest.mark.parametrize(("cfg_scale", "scale", "adaptive", "layers"), [
    (5.0, 3.0, 0.0, "mid"),
    (1.0, 2.0, 0.0, "mid,up"),
    (5.0, 3.0, 0.004, "down_blocks.0,up.block_1"),
])
def test_pag_matches_diffusers_sd1(cfg_scale, scale, adaptive, layers):
    from diffusers import StableDiffusionPAGPipeline

    reference, ours = _pair(TINY_SD15)
    latents, cond, uncond, _, _ = _inputs(TINY_SD15)
    pipe = StableDiffusionPAGPipeline(
        vae=_vae(), text_encoder=None, tokenizer=None, unet=reference, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        pag_applied_layers=_diffusers_layers(layers))
    with torch.no_grad():
        expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents,
                        num_inference_steps=STEPS, guidance_scale=cfg_scale, pag_scale=scale,
                        pag_adaptive_scale=adaptive, output_type="latent").images
    got = _ours(ours, latents, cond, uncond, cfg_scale, _pag_adder(TINY_SD15, scale, adaptive,
                                                                   layers))
    plain = _ours(ours, latents, cond, uncond, cfg_scale, lambda hooks, denoiser: None)
    assert (got - plain).abs().max() > 1e-3  # the term is really there
    assert_close(got, expected, TOLERANCE)


def _diffusers_layers(layers: str) -> list[str]:
    # diffusers 0.42 takes module-name patterns; ours also takes 0.28's "up.block_1".
    return [part.replace("up.block_1", "up_blocks.1.attentions") for part in layers.split(",")]


def test_pag_matches_diffusers_sdxl():
    from diffusers import StableDiffusionXLPAGPipeline

    reference, ours = _pair(TINY_SDXL)
    latents, cond, uncond, pooled, neg_pooled = _inputs(TINY_SDXL)
    pipe = StableDiffusionXLPAGPipeline(
        vae=_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
        unet=reference, scheduler=_scheduler(), force_zeros_for_empty_prompt=False,
        pag_applied_layers=["mid", "up_blocks.0.attentions.1"])
    size = dict(original_size=(64, 48), crops_coords_top_left=(0, 8), target_size=(64, 48))
    with torch.no_grad():
        expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond,
                        pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled,
                        latents=latents, num_inference_steps=STEPS, guidance_scale=5.0,
                        pag_scale=3.0, output_type="latent", height=16, width=16,
                        **size).images
    got = _ours(ours, latents, cond, uncond, 5.0,
                _pag_adder(TINY_SDXL, 3.0, 0.0, "mid,up_blocks.0.attentions.1"),
                pooled, neg_pooled)
    plain = _ours(ours, latents, cond, uncond, 5.0, lambda hooks, denoiser: None, pooled,
                  neg_pooled)
    assert (got - plain).abs().max() > 1e-3  # the term is really there
    assert_close(got, expected, TOLERANCE)


@pytest.mark.parametrize(("cfg_scale", "scale"), [(5.0, 0.75), (1.0, 0.5)])
def test_sag_matches_diffusers_sd1(cfg_scale, scale):
    from diffusers import StableDiffusionSAGPipeline

    reference, ours = _pair(TINY_SD15)
    # The SAG pipeline reads the head count from `attention_head_dim` and takes a list
    # (per level) but not a tuple: the same numbers, as a list.
    reference.register_to_config(attention_head_dim=list(reference.config.attention_head_dim))
    latents, cond, uncond, _, _ = _inputs(TINY_SD15, size=16)
    pipe = StableDiffusionSAGPipeline(
        vae=_vae(), text_encoder=None, tokenizer=None, unet=reference, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    with torch.no_grad():
        expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents,
                        num_inference_steps=STEPS, guidance_scale=cfg_scale, sag_scale=scale,
                        output_type="latent").images

    def add(hooks, denoiser):
        add_sag(hooks, scale=scale, blur_sigma=1.0, threshold=1.0)

    got = _ours(ours, latents, cond, uncond, cfg_scale, add)
    plain = _ours(ours, latents, cond, uncond, cfg_scale, lambda hooks, denoiser: None)
    assert (got - plain).abs().max() > 1e-3  # the term is really there
    assert_close(got, expected, TOLERANCE)
