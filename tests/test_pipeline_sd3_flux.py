"""Whole generations on tiny SD3.5-style and Flux.1-dev-style models equal diffusers' pipelines.

The models are random all-in-one files (`tests/helpers/flow_files.py`) loaded by the
runtime's model manager; their VAE is a random diffusers `AutoencoderKL` converted to
our names. Our side is the real job path: `plan_txt2img` (seeds, FlowConditioner,
Distilled CFG Scale), `sample_batch` (flow sigmas, first noise, CFG over the
`FlowDenoiser`, Euler) and the VAE decode with the family's scale and shift. The oracle
is diffusers' `StableDiffusion3Pipeline` / `FluxPipeline` (test-only) built from the same
weights (transformer through diffusers' single-file converters), fed our first noise as
`latents` (packed for Flux), our prompt embeddings, and our sigmas on a
`FlowMatchEulerDiscreteScheduler` with shift 1 (so it shifts nothing again).
Tolerances: final latents within 1e-4 (absolute), decoded pixels within 1/255 (both in
float32 on the CPU).

Also through `modules.pipeline.txt2img.txt2img` / `img2img`: images with their infotext
(Distilled CFG Scale only for Flux dev), img2img, X/Y/Z plot over steps, and a size
that is not a multiple of 16 named as a ParamsError.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from modules.infotext import parse_infotext
from modules.models.diffusers_keys import vae_diffusers_to_ldm
from modules.nn.mmdit import MMDiT
from modules.pipeline.output import decode_latents
from modules.pipeline.params import ParamsError, Txt2ImgParams
from modules.pipeline.plan import plan_txt2img
from modules.pipeline.sample import batch_rng, batch_sigmas, encode_prompts, sample_batch
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish
from tests.helpers.flow_files import TINY_MMDIT, TINY_VAE, random_parts, write_all_in_one

LATENT_TOLERANCE = 1e-4
PIXEL_TOLERANCE = 1 / 255
FAMILY_VAE = {"sd3": (1.5305, 0.0609), "flux": (0.3611, 0.1159)}
SIZE, STEPS = 64, 4
SD3_GRID16 = replace(TINY_MMDIT, pos_embed_max_size=16)


def random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def diffusers_vae(arch: str, seed: int):
    """A random diffusers VAE of the tiny shape with the family's latent scale and shift."""
    from diffusers import AutoencoderKL

    from tests.diffusers_configs import vae_diffusers_config

    torch.manual_seed(seed)
    scale, shift = FAMILY_VAE[arch]
    config = {**vae_diffusers_config(TINY_VAE), "scaling_factor": scale, "shift_factor": shift}
    vae = AutoencoderKL(**config, use_quant_conv=False, use_post_quant_conv=False)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    return vae.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A runtime whose checkpoint folder holds tiny_sd3 and tiny_flux; their diffusers VAEs."""
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime

    data = tmp_path_factory.mktemp("data")
    vaes = {}
    for index, arch in enumerate(("sd3", "flux")):
        parts = random_parts(arch, seed=20 + index)
        if arch == "sd3":  # 64 px are 32x32 latents (2x VAE): a 16x16 patch grid
            parts["diffusion"] = random_state(MMDiT(config=SD3_GRID16), seed=40)
        vaes[arch] = diffusers_vae(arch, seed=30 + index)
        parts["vae"] = vae_diffusers_to_ldm(vaes[arch].state_dict(), TINY_VAE)
        prefix = "vae." if arch == "flux" else "first_stage_model."
        write_all_in_one(data / "models" / "Stable-diffusion" / f"tiny_{arch}.safetensors",
                         parts, vae_prefix=prefix)
    # float32 everywhere (a CPU with bf16 would otherwise load these families in bf16).
    runtime = Runtime.create(parse_args(["--data-dir", str(data), "--no-half"]))
    runtime.ready.set()
    return runtime, vaes


def request(arch: str, **fields) -> Txt2ImgParams:
    fields = {"prompt": "a red cube on a table", "negative_prompt": "blurry", "seed": 1234,
              "width": SIZE, "height": SIZE, "steps": STEPS, "sampler_name": "Euler",
              "scheduler": "Automatic", "do_not_save_samples": True,
              "override_settings": {"sd_model_checkpoint": f"tiny_{arch}"}, **fields}
    return Txt2ImgParams(**fields)


def our_generation(runtime, params: Txt2ImgParams) -> dict:
    """The job path of one image: its noise, conds, sigmas, final latents and pixels."""
    plan = plan_txt2img(runtime, params)
    part = slice(0, 1)
    (latents, _), steps = finish(sample_batch(plan, part, job_no=0))
    conds, unconds = encode_prompts(plan, part)
    return dict(plan=plan, steps=steps, latents=latents,
                noise=batch_rng(plan, part, "cpu").first(),
                cond=conds[0].parts[0][0].at(0), uncond=unconds[0].at(0),
                sigmas=batch_sigmas(plan, None, "cpu"),
                pixels=decode_latents(plan.loaded, latents, plan.settings))


def scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(shift=1.0)


def sd3_pipeline(loaded, vae):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    from tests.mmdit_configs import sd3_diffusers_config

    transformer = SD3Transformer2DModel(**sd3_diffusers_config(loaded.family.diffusion)).eval()
    state = {"model.diffusion_model." + k: v.clone()
             for k, v in loaded.model.diffusion_model.state_dict().items()}
    transformer.load_state_dict(convert_sd3_transformer_checkpoint_to_diffusers(state),
                                strict=True)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler(), vae=vae, text_encoder=None,
        tokenizer=None, text_encoder_2=None, tokenizer_2=None, text_encoder_3=None,
        tokenizer_3=None)


def flux_pipeline(loaded, vae):
    from diffusers import FluxPipeline

    from tests.flux_oracle import bfl_to_diffusers, diffusers_flux

    config = loaded.family.diffusion
    transformer = diffusers_flux(config).eval()
    transformer.load_state_dict(bfl_to_diffusers(loaded.model.diffusion_model.state_dict(),
                                                 config), strict=True)
    return FluxPipeline(transformer=transformer, scheduler=scheduler(), vae=vae,
                        text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None)


def assert_pixels_close(ours, reference) -> None:
    """Our PIL image against diffusers' [0, 1] numpy output, in 8-bit steps."""
    ours = torch.from_numpy(np.asarray(ours, dtype=np.float32)) / 255
    difference = (ours - torch.from_numpy(reference[0]).float()).abs().max().item()
    assert difference <= PIXEL_TOLERANCE + 1e-6, f"pixels differ by {difference * 255:.2f}/255"


@torch.no_grad()
def pipeline_outputs(pipe, common: dict) -> tuple[torch.Tensor, np.ndarray]:
    """The diffusers pipeline's final latents (as it returns them) and [0, 1] pixels."""
    return (pipe(**common, output_type="latent").images,
            pipe(**common, output_type="np").images)


def assert_same_generation(ours: dict, latents: torch.Tensor, pixels: np.ndarray) -> None:
    """Our final latents within LATENT_TOLERANCE, our image within PIXEL_TOLERANCE."""
    difference = (ours["latents"] - latents).abs().max().item()
    assert difference <= LATENT_TOLERANCE, difference
    assert_pixels_close(ours["pixels"][0], pixels)


def test_sd35_generation_equals_stable_diffusion_3_pipeline(setup):
    runtime, vaes = setup
    ours = our_generation(runtime, request("sd3", cfg_scale=4.5))
    assert ours["steps"] == STEPS and float(ours["sigmas"][0]) == 1.0
    pipe = sd3_pipeline(ours["plan"].loaded, vaes["sd3"])
    cond, uncond = ours["cond"], ours["uncond"]
    assert cond.crossattn.shape == (77 + 256, 64) and cond.vector.shape == (64,)
    common = dict(prompt_embeds=cond.crossattn[None], pooled_prompt_embeds=cond.vector[None],
                  negative_prompt_embeds=uncond.crossattn[None],
                  negative_pooled_prompt_embeds=uncond.vector[None], guidance_scale=4.5,
                  num_inference_steps=STEPS, sigmas=ours["sigmas"][:-1].tolist(),
                  latents=ours["noise"], height=SIZE, width=SIZE)
    latents, pixels = pipeline_outputs(pipe, common)
    assert_same_generation(ours, latents, pixels)


def test_flux_dev_generation_equals_flux_pipeline(setup):
    runtime, vaes = setup
    ours = our_generation(runtime, request("flux", cfg_scale=1.0, distilled_cfg_scale=2.5))
    pipe = flux_pipeline(ours["plan"].loaded, vaes["flux"])
    noise, cond = ours["noise"], ours["cond"]
    assert cond.crossattn.shape == (512, 64) and cond.vector.shape == (32,)  # dev: 512 T5 tokens
    channels, height, width = noise.shape[1:]
    packed = pipe._pack_latents(noise, 1, channels, height, width)
    common = dict(prompt_embeds=cond.crossattn[None], pooled_prompt_embeds=cond.vector[None],
                  guidance_scale=2.5, num_inference_steps=STEPS,
                  sigmas=ours["sigmas"][:-1].tolist(), latents=packed, height=SIZE, width=SIZE)
    latents, pixels = pipeline_outputs(pipe, common)
    latents = pipe._unpack_latents(latents, SIZE, SIZE, pipe.vae_scale_factor)
    assert_same_generation(ours, latents, pixels)


def test_distilled_guidance_changes_flux_dev_only(setup):
    runtime, _ = setup
    low = our_generation(runtime, request("flux", cfg_scale=1.0, distilled_cfg_scale=1.0))
    high = our_generation(runtime, request("flux", cfg_scale=1.0, distilled_cfg_scale=6.0))
    assert not torch.equal(low["latents"], high["latents"])
    a = our_generation(runtime, request("sd3", distilled_cfg_scale=1.0))
    b = our_generation(runtime, request("sd3", distilled_cfg_scale=6.0))
    assert torch.equal(a["latents"], b["latents"])


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_txt2img_images_with_infotext(setup, arch):
    runtime, _ = setup
    params = request(arch, cfg_scale=1.0 if arch == "flux" else 4.5, batch_size=2,
                     do_not_save_samples=False)
    result, steps = finish(txt2img(runtime, params))
    assert steps == STEPS and len(result.images) == 2
    assert result.images[0].size == (SIZE, SIZE) and result.seeds == [1234, 1235]
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Model"] == f"tiny_{arch}" and parsed["Steps"] == str(STEPS)
    assert parsed["Sampler"] == "Euler" and parsed["Seed"] == "1234"
    if arch == "flux":
        assert parsed["Distilled CFG Scale"] == "3.5"
    else:
        assert "Distilled CFG Scale" not in parsed


def test_size_not_multiple_of_16_is_named(setup):
    runtime, _ = setup
    with pytest.raises(ParamsError, match="width"):
        finish(txt2img(runtime, request("flux", width=72)))


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_img2img_runs(setup, arch):
    from modules.pipeline.img2img import img2img
    from modules.pipeline.params import Img2ImgParams

    runtime, _ = setup
    first, _ = finish(txt2img(runtime, request(arch, cfg_scale=1.0)))
    fields = {k: v for k, v in vars(request(arch, cfg_scale=1.0)).items()
              if k in Img2ImgParams.__dataclass_fields__}
    params = Img2ImgParams(**{**fields, "denoising_strength": 0.5}, init_images=first.images)
    result, steps = finish(img2img(runtime, params))
    # A1111's img2img rule: int(0.5 * 4) + 1 steps of the 4-step schedule's tail.
    assert steps == 3 and result.images[0].size == (SIZE, SIZE)
    assert result.images[0].tobytes() != first.images[0].tobytes()


def test_xyz_plot_over_steps(setup):
    runtime, _ = setup
    params = request("flux", cfg_scale=1.0, script_name="X/Y/Z plot", script_args={
        "x_type": "Steps", "x_values": "2, 3", "include_lone_images": True})
    result, steps = finish(txt2img(runtime, params))
    assert steps == 5
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 2 and grid.size[0] >= 2 * SIZE and grid.size[1] > SIZE  # labels
    parsed = [parse_infotext(text) for text in result.infotexts[1:]]
    assert [p["Steps"] for p in parsed] == ["2", "3"]
    assert all(p["Distilled CFG Scale"] == "3.5" for p in parsed)


def test_flux_hires_fix_takes_its_own_distilled_cfg(setup):
    runtime, _ = setup
    hires = dict(cfg_scale=1.0, enable_hr=True, denoising_strength=0.5, hr_scale=1.5,
                 hr_upscaler="Latent", hr_second_pass_steps=2)
    low, _ = finish(txt2img(runtime, request("flux", **hires, hr_distilled_cfg=1.0)))
    high, _ = finish(txt2img(runtime, request("flux", **hires, hr_distilled_cfg=5.0)))
    assert high.images[0].size == (96, 96)
    parsed = parse_infotext(high.infotexts[0])
    assert parsed["Distilled CFG Scale"] == "3.5"
    assert parsed["Hires Distilled CFG Scale"] == "5.0"
    assert low.images[0].tobytes() != high.images[0].tobytes()


@pytest.mark.parametrize("arch", ["sd3", "flux"])
def test_inpainting_keeps_the_unmasked_part(setup, arch):
    from PIL import Image

    from modules.pipeline.img2img import img2img
    from modules.pipeline.params import Img2ImgParams

    runtime, _ = setup
    init = Image.fromarray(np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8)[None, :, None],
                                   (SIZE, 1, 3)))
    mask = Image.new("L", (SIZE, SIZE), 0)
    mask.paste(255, (0, 0, SIZE // 2, SIZE))  # repaint the left half
    fields = {k: v for k, v in vars(request(arch, cfg_scale=1.0)).items()
              if k in Img2ImgParams.__dataclass_fields__}
    params = Img2ImgParams(**{**fields, "denoising_strength": 0.9}, init_images=[init],
                           mask=mask, mask_blur_x=0, mask_blur_y=0)
    result, _ = finish(img2img(runtime, params))
    out, original = np.asarray(result.images[0], int), np.asarray(init, int)
    assert np.abs(out - original)[:, SIZE // 2:].max() <= 1
    assert np.abs(out - original)[:, :SIZE // 2].max() > 10


def test_api_takes_distilled_cfg_scale_and_names_a_bad_size(setup):
    from fastapi.testclient import TestClient

    from modules.api.app import create_api_app
    from tests.helpers.api_runtime import decode_png

    runtime, _ = setup
    client = TestClient(create_api_app(runtime))
    body = {"prompt": "a cat", "width": SIZE, "height": SIZE, "steps": 2, "seed": 3,
            "cfg_scale": 1, "distilled_cfg_scale": 2.0,
            "override_settings": {"sd_model_checkpoint": "tiny_flux"}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["distilled_cfg_scale"] == 2.0
    image = decode_png(response.json()["images"][0])
    assert parse_infotext(image.info["parameters"])["Distilled CFG Scale"] == "2.0"
    response = client.post("/sdapi/v1/txt2img", json={**body, "width": 72})
    assert response.status_code == 422 and "width" in response.text
