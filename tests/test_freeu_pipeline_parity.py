"""FreeU through the sampler against diffusers' pipelines with `unet.enable_freeu`.

Whole DDIM runs on tiny SD1 and SDXL U-Nets with the same weights, prompt embeddings and
initial latents (the harness of tests/test_pag_sag_parity.py): diffusers'
`StableDiffusionPipeline` / `StableDiffusionXLPipeline` with FreeU enabled on the U-Net,
against our CFG denoiser with the FreeU script's step hook (`PatchWindowHook` over
`FreeUPatch(version="1", rule="levels")`, the whole window) and our "DDIM" sampler.
Tolerance: max |ours - diffusers| <= 1e-4 * max |diffusers| (float32 rounding).
"""

from __future__ import annotations

import torch

from modules.nn.guidance_freeu import FreeUPatch
from modules.scripts.builtin.tool_script import PatchWindowHook
from tests.helpers.parity import assert_close
from tests.test_pag_sag_parity import STEPS, TOLERANCE, _inputs, _ours, _scheduler, _vae
from tests.test_unet_parity import _pair
from tests.tiny import TINY_SD15, TINY_SDXL

FACTORS = dict(b1=1.3, b2=1.5, s1=0.8, s2=0.3)


def _freeu(family):
    def add(hooks, denoiser):
        patch = FreeUPatch(**FACTORS, model_channels=family.unet.model_channels,
                           levels=len(family.unet.channel_mult), version="1", rule="levels")
        hooks.before_model.append(PatchWindowHook(patch, 0.0, 1.0))
    return add


def test_freeu_run_matches_diffusers_sd1_pipeline():
    from diffusers import StableDiffusionPipeline

    reference, ours = _pair(TINY_SD15)
    latents, cond, uncond, _, _ = _inputs(TINY_SD15, size=16)
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=None, tokenizer=None, unet=reference, scheduler=_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.enable_freeu(**FACTORS)
    with torch.no_grad():
        expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=latents,
                        num_inference_steps=STEPS, guidance_scale=5.0,
                        output_type="latent").images
    got = _ours(ours, latents, cond, uncond, 5.0, _freeu(TINY_SD15))
    plain = _ours(ours, latents, cond, uncond, 5.0, lambda hooks, denoiser: None)
    assert (got - plain).abs().max() > 1e-2 * plain.abs().max()  # FreeU is really there
    assert_close(got, expected, TOLERANCE)


def test_freeu_run_matches_diffusers_sdxl_pipeline():
    from diffusers import StableDiffusionXLPipeline

    reference, ours = _pair(TINY_SDXL)
    latents, cond, uncond, pooled, neg_pooled = _inputs(TINY_SDXL)
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None,
        unet=reference, scheduler=_scheduler(), force_zeros_for_empty_prompt=False)
    pipe.enable_freeu(**FACTORS)
    size = dict(original_size=(64, 48), crops_coords_top_left=(0, 8), target_size=(64, 48))
    with torch.no_grad():
        expected = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond,
                        pooled_prompt_embeds=pooled, negative_pooled_prompt_embeds=neg_pooled,
                        latents=latents, num_inference_steps=STEPS, guidance_scale=5.0,
                        output_type="latent", height=16, width=16, **size).images
    got = _ours(ours, latents, cond, uncond, 5.0, _freeu(TINY_SDXL), pooled, neg_pooled)
    assert_close(got, expected, TOLERANCE)
