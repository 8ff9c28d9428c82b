"""One measurement of `bench_pipeline.py`, run in its own process (see that file).

Builds diffusers' models with their own seeded random init and ours from the same
tensors (renamed by `modules.models.diffusers_keys`), then times one VAE decode or one
whole image for the engine asked for (saving the output when asked). Engine "both"
runs each once and returns the largest absolute difference of their outputs instead.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

from modules.conditioning.sdxl import SizeConditioning, sdxl_vector
from modules.models.diffusers_keys import unet_diffusers_to_ldm, vae_diffusers_to_ldm
from modules.models.families import SD15, SDXL
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.unet import UNetModel
from modules.sampling.denoiser import Denoiser, model_sigmas
from modules.sampling.samplers_dpmpp import sample_dpmpp_2m
from modules.sampling.schedules import karras
from tests.diffusers_configs import unet_diffusers_config, vae_diffusers_config

CFG_SCALE = 7.0


def _family(options: dict):
    """SD1.5 (default) or SDXL (`"family": "sdxl"`), full size or the tests' tiny configs."""
    from tests import tiny

    sdxl = options.get("family", "sd15") == "sdxl"
    if options["tiny"]:
        return tiny.TINY_SDXL if sdxl else tiny.TINY_SD15
    return SDXL if sdxl else SD15


def _same_weights(theirs: torch.nn.Module, ours_class, config, to_ldm, dtype: torch.dtype):
    """Diffusers' model in `dtype` and ours (NHWC, eval) holding the very same tensors."""
    theirs = theirs.eval().to(dtype)
    with torch.device("meta"):
        ours = ours_class(config=config)
    ours.load_state_dict(to_ldm(theirs.state_dict(), config), assign=True)
    ours.set_channels_last(True)
    return ours.eval(), theirs


@contextmanager
def _initialised_in(dtype: torch.dtype):
    """Random init straight in a half dtype: a float32 init first would set the process's
    peak RSS (10 GB for SDXL's U-Net), which is the bench's cost, not a user's."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype in (torch.bfloat16, torch.float16) else before)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_vaes(family, dtype: torch.dtype):
    from diffusers import AutoencoderKL as DiffusersVAE

    torch.manual_seed(0)
    with _initialised_in(dtype):
        theirs = DiffusersVAE(**vae_diffusers_config(family.vae))
    return _same_weights(theirs, AutoencoderKL, family.vae, vae_diffusers_to_ldm, dtype)


def build_unets(family, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with _initialised_in(dtype):
        theirs = UNet2DConditionModel(**unet_diffusers_config(family.unet))
    return _same_weights(theirs, UNetModel, family.unet, unet_diffusers_to_ldm, dtype)


def _latent(family, size: int, dtype: torch.dtype, batch: int = 1) -> torch.Tensor:
    side = size // family.vae.downscale
    generator = torch.Generator().manual_seed(1)
    return torch.randn(batch, family.unet.in_channels, side, side, generator=generator).to(dtype)


def decode_easel(vae, z):
    return vae.decode(z)


def decode_diffusers(vae, z):
    return vae.decode(z).sample


def image_easel(unet, vae, family, z, context, steps: int, y=None):
    table = model_sigmas(family.schedule)
    sigmas = karras(steps, float(table[0]), float(table[-1])).to(z.dtype)
    denoiser = Denoiser(unet, sigmas=table, prediction=family.prediction)

    def guided(x, sigma, **_):
        both = denoiser(torch.cat([x, x]), sigma.expand(2), context=context, y=y)
        cond, uncond = both.chunk(2)
        return uncond + CFG_SCALE * (cond - uncond)

    generator = sample_dpmpp_2m(guided, z * sigmas[0], sigmas)
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        latent = stop.value
    return vae.decode((latent / family.vae.scale_factor).to(next(vae.parameters()).dtype))


def image_diffusers(unet, vae, family, z, context, steps: int, added=None):
    """`added`: SDXL's `added_cond_kwargs` (pooled text, size numbers), else None."""
    from diffusers import DPMSolverMultistepScheduler

    schedule = family.schedule
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=schedule.num_timesteps, beta_start=schedule.beta_start,
        beta_end=schedule.beta_end, beta_schedule="scaled_linear", use_karras_sigmas=True)
    scheduler.set_timesteps(steps)
    latent = z * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_in = scheduler.scale_model_input(torch.cat([latent, latent]), t)
        eps = unet(model_in, t, encoder_hidden_states=context,
                   **({"added_cond_kwargs": added} if added else {})).sample
        cond, uncond = eps.chunk(2)
        latent = scheduler.step(uncond + CFG_SCALE * (cond - uncond), t, latent).prev_sample
    return vae.decode(latent / family.vae.scale_factor).sample


def _size_conditioning(family, size: int, dtype: torch.dtype):
    """SDXL's ADM input for a `size`² image as Easel takes it (one vector) and as diffusers
    does (pooled text and six size numbers, embedded inside its U-Net); (None, None) else."""
    adm = family.unet.adm_in_channels
    if adm is None:
        return None, None
    numbers = SizeConditioning(width=size, height=size)
    pooled = torch.randn(2, adm - 6 * 256, generator=torch.Generator().manual_seed(3))
    y = sdxl_vector(pooled, numbers, refiner=False, is_negative=False).to(dtype)
    time_ids = torch.tensor([numbers.numbers(refiner=False, is_negative=False)] * 2)
    return y, {"text_embeds": pooled.to(dtype), "time_ids": time_ids.to(dtype)}


def _jobs(options: dict) -> dict:
    """Engine name -> callable for the part asked for: "easel" (with `cpu_backend`
    "openvino": its U-Net through `--cpu-backend openvino`), "diffusers", and for whole
    images "plain_openvino" (diffusers with its U-Net converted by OpenVINO)."""
    family = _family(options)
    dtype = getattr(torch, options["dtype"])
    # Easel's own dtype (the app's default may differ from the reference's, `--easel-dtype`).
    mine = getattr(torch, options.get("easel_dtype") or options["dtype"])
    vae_ours, vae_theirs = build_vaes(family, dtype)
    vae_ours.to(mine)
    if options["part"] == "vae":
        z = _latent(family, options["size"], dtype)
        return {"easel": lambda **_: decode_easel(vae_ours, z.to(mine)),
                "diffusers": lambda **_: decode_diffusers(vae_theirs, z)}
    unet_ours, unet_theirs = build_unets(family, dtype)
    unet_ours.to(mine)
    z = _latent(family, options["size"], dtype)
    generator = torch.Generator().manual_seed(2)
    context = torch.randn(2, 77, family.unet.context_dim, generator=generator).to(dtype)
    y, added = _size_conditioning(family, options["size"], dtype)
    steps = options["steps"]
    engines = {}
    if options.get("cpu_backend") == "openvino":
        from bench.openvino_engines import easel_openvino

        cache = options.get("openvino_cache")  # shared by the processes: converted once
        unet_ours = easel_openvino(unet_ours, Path(cache) if cache else None)
    if options.get("engine") == "plain_openvino":
        if y is not None:
            raise ValueError("plain_openvino converts SD1.5's U-Net only")
        from bench.openvino_engines import plain_openvino

        plain = plain_openvino(unet_theirs, torch.cat([z, z]), context, dtype)
        engines["plain_openvino"] = lambda steps=steps: image_diffusers(
            plain, vae_theirs, family, z, context, steps)
    # As the app: the sampler's latents stay float32 whatever the weights' dtype (the U-Net
    # casts), the text encoding comes in the weights' dtype.
    engines["easel"] = lambda steps=steps: image_easel(
        unet_ours, vae_ours, family, z.float(), context.to(mine), steps,
        None if y is None else y.to(mine))
    engines["diffusers"] = lambda steps=steps: image_diffusers(
        unet_theirs, vae_theirs, family, z, context, steps, added)
    return engines


def run(options: dict) -> dict:
    engines = _jobs(options)
    with torch.inference_mode():
        if options["engine"] == "both":
            difference = (engines["easel"]().float() - engines["diffusers"]().float()).abs().max()
            return {"max_abs_diff": float(difference)}
        job = engines[options["engine"]]
        if options.get("warmup"):  # first calls build oneDNN primitives: time a warm call
            job(**({"steps": options["warmup_steps"]} if options.get("warmup_steps") else {}))
        start = time.perf_counter()
        output = job()
        seconds = time.perf_counter() - start
    if options.get("save_to"):  # for the parent to compare the engines' outputs
        torch.save(output.float(), options["save_to"])
    return {"seconds": seconds}
