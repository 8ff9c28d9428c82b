"""CFG rescale phi (`modules.sampling.cfg_rescale`, the "CFG Rescale" script).

Proof: the hook, fed D-space predictions made from eps-space ones, gives exactly
diffusers' `rescale_noise_cfg` (what `StableDiffusionPipeline(..., guidance_rescale=phi)`
applies) after converting back to eps; one Euler step of CFGDenoiser with the hook equals
diffusers' StableDiffusionPipeline(guidance_rescale=0.7) on the same tiny U-Net weights
(and phi 0 equals guidance_rescale=0); phi 0 or disabled adds no hook and the image is
bit-identical; it changes the image on an SD1 model and on a flow model (SD3) without a
warning; its infotext key is the extension's "CFG Rescale".
"""

from __future__ import annotations

import pytest
import torch
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.sampling.cfg_rescale import CFGRescaleHook
from modules.sampling.guidance import GuidanceParams
from modules.scripts.args import ScriptArgsError, parse_args
from modules.scripts.builtin.cfg_rescale import CFGRescale, CFGRescaleArgs
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15


def _guided(phi: float, scale: float = 7.5, seed: int = 0):
    """(our eps after the hook, diffusers' rescaled eps) for the same random predictions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 8, 8, generator=g) * 3
    sigma = torch.tensor([2.5, 0.7])
    eps_u, eps_c = torch.randn(2, 2, 4, 8, 8, generator=g)
    eps_c = eps_c * 1.7 + 0.3  # a different spread, so the ratio is not 1
    s = sigma.view(-1, 1, 1, 1)
    d_u, d_c = x - s * eps_u, x - s * eps_c
    params = GuidanceParams(x=x, sigma=sigma, denoised=d_u + scale * (d_c - d_u), cond=d_c,
                            uncond=d_u, cfg_scale=scale, step=0, total_steps=10,
                            rerun=None, row_images=[0, 1, 0, 1],
                            row_is_uncond=[False, False, True, True])
    CFGRescaleHook(phi)(params)
    ours = (x - params.denoised) / s
    eps_cfg = eps_u + scale * (eps_c - eps_u)
    return ours, rescale_noise_cfg(eps_cfg, eps_c, guidance_rescale=phi), eps_cfg


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_equals_diffusers_rescale_noise_cfg(phi):
    ours, theirs, eps_cfg = _guided(phi)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    if phi > 0:  # a no-op would fail: the rescale moves the prediction noticeably
        assert (theirs - eps_cfg).abs().max() > 0.1


def test_phi_one_matches_the_positive_spread_per_image():
    ours, _, _ = _guided(1.0)
    g = torch.Generator().manual_seed(0)
    torch.randn(2, 4, 8, 8, generator=g)
    _, eps_c = torch.randn(2, 2, 4, 8, 8, generator=g)
    eps_c = eps_c * 1.7 + 0.3
    torch.testing.assert_close(ours.std(dim=(1, 2, 3)), eps_c.std(dim=(1, 2, 3)))


def test_args_validated():
    with pytest.raises(ScriptArgsError, match="phi"):
        parse_args(CFGRescaleArgs, {"enabled": True, "phi": 1.5}, script="CFG Rescale")
    assert CFGRescale().infotext_fields() == {"phi": "CFG Rescale"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def generate(runtime, **fields):
    fields = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "seed": 5,
              "sampler_name": "Euler", "cfg_scale": 7.0, "do_not_save_samples": True, **fields}
    result, _ = finish(txt2img(runtime, Txt2ImgParams(**fields)))
    return result


def test_off_means_off_and_on_changes_the_image(runtime):
    plain = generate(runtime)
    for args in ({"enabled": False, "phi": 0.7}, {"enabled": True, "phi": 0.0}):
        off = generate(runtime, alwayson_scripts={"CFG Rescale": {"args": args}})
        assert off.images[0].tobytes() == plain.images[0].tobytes()
        assert "CFG Rescale" not in off.infotexts[0]
    on = generate(runtime, alwayson_scripts={"cfg rescale": {"args": [True, 0.7]}})
    assert on.images[0].tobytes() != plain.images[0].tobytes()
    assert "CFG Rescale: 0.7" in on.infotexts[0]


def test_one_euler_step_equals_diffusers_pipeline_guidance_rescale():
    """diffusers' StableDiffusionPipeline(guidance_rescale=0.7) on a tiny SD1 U-Net with the
    same weights, one Euler step from sigma_max ("trailing" spacing: timestep 999) down to
    0, whose result is the guided x0 estimate D; ours: CFGDenoiser + the CFG Rescale hook."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel

    from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
    from modules.models.diffusers_keys import unet_diffusers_to_ldm
    from modules.nn.unet import UNetModel
    from modules.sampling.cfg import CFGDenoiser, Hooks
    from modules.sampling.denoiser import Denoiser, model_sigmas
    from tests.diffusers_configs import unet_diffusers_config
    from tests.helpers.parity import perturb

    torch.manual_seed(0)
    reference = UNet2DConditionModel(**unet_diffusers_config(TINY_SD15.unet)).eval()
    perturb(reference, 0)
    ours = UNetModel(config=TINY_SD15.unet).eval()
    ours.load_state_dict(unet_diffusers_to_ldm(reference.state_dict(), TINY_SD15.unet))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                       beta_schedule="scaled_linear",
                                       timestep_spacing="trailing")
    pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=reference,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 4, 8, 8, generator=g)
    positive, negative = torch.randn(2, 1, 77, 32, generator=g)
    results = []
    for phi in (0.0, 0.7):
        with torch.no_grad():
            theirs = pipe(prompt_embeds=positive, negative_prompt_embeds=negative, height=64,
                          width=64, num_inference_steps=1, guidance_scale=7.5,
                          guidance_rescale=phi, latents=noise.clone(),
                          output_type="latent").images
        scheduler.set_timesteps(1)
        sigma = scheduler.sigmas[:1].float()
        x = noise * scheduler.init_noise_sigma  # what diffusers starts from
        hooks = Hooks(guidance=[CFGRescaleHook(phi)] if phi else [])
        denoiser = Denoiser(ours, sigmas=model_sigmas(TINY_SD15.schedule))
        cfg = CFGDenoiser(denoiser, [MultiCond.single(ScheduledCond.constant(Cond(positive[0])))],
                          [ScheduledCond.constant(Cond(negative[0]))], 7.5, total_steps=1,
                          hooks=hooks)
        with torch.no_grad():
            mine = cfg(x, sigma)
        # Compared as eps = (x - D) / sigma: D carries sigma (14.6) times the U-Nets'
        # float32 rounding, amplified by the CFG scale.
        mine_eps, their_eps = (x - mine) / sigma, (x - theirs) / sigma
        torch.testing.assert_close(mine_eps, their_eps, rtol=1e-4, atol=1e-4)
        results.append(mine_eps)
    assert (results[0] - results[1]).abs().max() > 1e-2  # the rescale made a difference
