"""Hires fix: txt2img's second pass, img2img on the upscaled first-pass result.

A1111's recipe (docs/a1111-semantics.md, "Hires fix" and "Step rule"): the first-pass latents are
enlarged to the hires size, either in latent space (the "Latent ..." modes: torch interpolation of
the latent) or as pictures (decode, an upscaler such as Lanczos or an ESRGAN model,
encode again); a latent too large for an exact `hr_resize_x` x `hr_resize_y` box is
cropped centrally. Then an img2img pass runs with `hr_second_pass_steps` (or the
first pass's steps) as explicit steps, so the schedule is
`int(steps / denoising_strength)` long and its last `steps` sigmas are sampled.
Its noise comes from a new `ImageRNG` with the same seeds at the hires latent shape, and
an image upscaler's pictures are encoded with a posterior sample seeded per image.
The pass may use its own sampler, scheduler, prompts and checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from modules.devices import execution_device
from modules.imaging.resize import resize
from modules.jobs import JobInterrupted
from modules.pipeline.flow_plan import is_flow, with_flow_conditioner
from modules.pipeline.image_conditioning import inpaint_image_cond
from modules.pipeline.params import LATENT_UPSCALE_MODES, ParamsError, Txt2ImgParams, hires_size
from modules.pipeline.plan import LatentStart, Plan
from modules.pipeline.refiner import split_for_hires
from modules.pipeline.sample import sample_batch
from modules.pipeline.vae_codec import (
    decode,
    decode_latents,
    encode,
    images_to_tensor,
    sample_posterior,
)
from modules.sampling import registry as R

# Latent upscale mode -> (torch interpolation mode, antialias).
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False), "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False), "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False), "Latent (nearest-exact)": ("nearest-exact", False),
}
SAME = {"", "Use same sampler", "Use same scheduler", "Use same checkpoint"}


def _chosen(value: str | None) -> str | None:
    return None if value is None or value in SAME else value


@dataclass
class HiresPass:
    """The second pass of one txt2img job; `plan` is the one its images are saved with."""

    runtime: object
    first: Plan
    sampling: Plan  # the hires pass: its size, steps, sampler, prompts, model
    plan: Plan  # the first pass's plan (infotext), with the hires model for decoding
    upscaler: str
    upscale_to: tuple[int, int]
    truncate: tuple[int, int]

    def run(self, part: slice, latents: torch.Tensor | None, *, job_no: int, images=None):
        """Upscale, then sample; yields Progress, returns (latents, command).

        `images` (PIL) replace the decoded first pass for image upscalers; without
        `latents`, they are encoded for the latent modes (hires on a finished picture).
        """
        try:
            start = self.second_pass_start(part, latents, images)
        except JobInterrupted as stopped:  # stopped in a VAE pass: no latents for this batch
            return None, self.sampling.cancel.take() or stopped.command
        return (yield from sample_batch(self.sampling, part, job_no=job_no, start=start))

    def second_pass_start(self, part: slice, latents: torch.Tensor | None, images) -> LatentStart:
        """The second pass's start: upscaled (VAE decode / encode as the upscaler needs),
        with the inpainting conditioning of a 9-channel model; the VAE passes check the
        job's cancellation."""
        p = self.first.params
        if latents is None and self.upscaler in LATENT_MODES:
            latents = encode_seeded(self.first.loaded, images, self.first.settings,
                                    self.first.seeds[part], cancel=self.first.cancel)
        samples = self.upscaled(latents, part, images)
        samples = truncate(samples, *self.truncate)
        start = LatentStart(init_latent=samples, denoising_strength=p.denoising_strength,
                            steps=p.hr_second_pass_steps or p.steps, explicit_steps=True)
        loaded = self.sampling.loaded
        if loaded.family.is_inpainting:
            pixels = decode(loaded.vae, samples / loaded.family.vae.scale_factor
                            + loaded.family.vae.shift_factor, self.sampling.settings,
                            self.sampling.cancel)
            start.image_cond = inpaint_image_cond(
                loaded, pixels.clamp(-1, 1), torch.ones(pixels.shape[0], 1, *pixels.shape[-2:]),
                weight=self.sampling.settings.inpainting_mask_weight,
                settings=self.sampling.settings, cancel=self.sampling.cancel)
        return start

    def upscaled(self, latents: torch.Tensor | None, part: slice, images=None) -> torch.Tensor:
        """The batch `part` at the hires size; an image upscaler's pictures are encoded
        with each image's own seed (image i of a batch equals its seed run alone)."""
        width, height = self.upscale_to
        factor = self.first.loaded.family.vae.downscale
        if self.upscaler in LATENT_MODES:
            mode, antialias = LATENT_MODES[self.upscaler]
            return F.interpolate(latents, size=(height // factor, width // factor), mode=mode,
                                 antialias=antialias)
        upscale = None
        if self.upscaler not in ("None", "Lanczos"):
            from modules.upscaling.registry import upscalers_of

            registry, settings = upscalers_of(self.runtime), self.first.settings
            upscale = lambda image, scale: registry.upscale(  # noqa: E731
                image, scale, self.upscaler, settings)
        if images is None:
            images = decode_latents(self.first.loaded, latents, self.first.settings,
                                    self.first.cancel)
        if self.upscaler == "Nearest":
            images = [image.resize((width, height), resample=0) for image in images]
        else:
            images = [resize(image, width, height, upscale) for image in images]
        return encode_seeded(self.sampling.loaded, images, self.sampling.settings,
                             self.first.seeds[part], cancel=self.sampling.cancel)


def encode_seeded(loaded, images, settings, seeds: list[int], cancel=None) -> torch.Tensor:
    """PIL images -> latents, image i's posterior sampled with noise seeded by `seeds[i]`
    (as img2img does), so a batch equals its images run one by one."""
    if len(images) != len(seeds):
        raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
    pixels = images_to_tensor(images)
    posterior = encode(loaded.vae, pixels.to(execution_device(loaded.vae)), settings, cancel)
    return sample_posterior(loaded, posterior, list(seeds))


def truncate(samples: torch.Tensor, truncate_x: int, truncate_y: int) -> torch.Tensor:
    """Crop `truncate_*` latent pixels, split between both sides (A1111's order)."""
    height, width = samples.shape[-2:]
    return samples[..., truncate_y // 2:height - (truncate_y + 1) // 2,
                   truncate_x // 2:width - (truncate_x + 1) // 2]


def check_upscaler(runtime, name: str) -> None:
    if name in LATENT_MODES or name in ("None", "Lanczos", "Nearest"):
        return
    from modules.upscaling.registry import upscalers_of

    names = upscalers_of(runtime).names()
    if name not in names:
        raise ParamsError("hr_upscaler", f"unknown upscaler {name!r}; available: "
                                         f"{', '.join(list(LATENT_UPSCALE_MODES) + names)}")


def prepare(runtime, plan: Plan) -> HiresPass:
    """Resolve everything the second pass needs; fails before any sampling."""
    p: Txt2ImgParams = plan.params
    upscaler = p.hr_upscaler or plan.settings.latent_upscale_default_mode
    check_upscaler(runtime, upscaler)
    factor = plan.loaded.family.vae.downscale
    width, height, truncate_x, truncate_y = hires_size(p, factor)
    final = (width - truncate_x * factor, height - truncate_y * factor)
    sampler, scheduler = R.resolve_sampler(_chosen(p.hr_sampler_name) or p.sampler_name,
                                           _chosen(p.hr_scheduler) or p.scheduler)
    checkpoint = _chosen(p.hr_checkpoint_name)
    loaded = runtime.models.get(checkpoint) if checkpoint else plan.loaded
    if checkpoint and is_flow(loaded.family):
        loaded = with_flow_conditioner(loaded, runtime.models.tokenizer())
    prompts = [p.hr_prompt or prompt for prompt in plan.prompts]
    negatives = [p.hr_negative_prompt or prompt for prompt in plan.negative_prompts]
    params = replace(p, width=final[0], height=final[1], steps=p.hr_second_pass_steps or p.steps,
                     distilled_cfg_scale=p.hr_distilled_cfg)
    sampling = replace(plan, params=params, sampler=sampler, scheduler=scheduler, loaded=loaded,
                       prompts=prompts, negative_prompts=negatives)
    if loaded is not plan.loaded or prompts != plan.prompts or negatives != plan.negative_prompts:
        sampling.networks = _networks(runtime, sampling)
        plan.warnings += [w for w in sampling.networks.warnings if w not in plan.warnings]
    plan.passes = sampling.passes = 2
    sampling.second_pass = True
    plan.refiner, sampling.refiner = split_for_hires(plan.refiner, plan.settings)
    # A1111: the high-res pass merges with its own ratio when set, else the first pass's.
    sampling.token_merging = plan.settings.token_merging_ratio_hr or plan.token_merging
    if plan.settings.token_merging_ratio_hr:
        plan.info_fields = {**plan.info_fields,
                            "token_merging_ratio_hr": plan.settings.token_merging_ratio_hr}
    plan.info_fields = {**plan.info_fields, "denoising_strength": p.denoising_strength}
    plan.extra_params = {**plan.extra_params, **extra_params(p, plan, sampling, upscaler)}
    collect = plan if loaded is plan.loaded else replace(plan, loaded=loaded)
    return HiresPass(runtime=runtime, first=plan, sampling=sampling, plan=collect,
                     upscaler=upscaler, upscale_to=(width, height),
                     truncate=(truncate_x, truncate_y))


def _networks(runtime, plan: Plan):
    from modules.networks.activate import NetworkRegistry, activate_networks

    registry = getattr(runtime, "networks", None) or NetworkRegistry.for_paths(
        runtime.paths, runtime.models.hash_cache)
    return activate_networks(registry, plan.loaded, plan.prompts, plan.negative_prompts,
                             comments=plan.settings.enable_prompt_comments)


def extra_params(p: Txt2ImgParams, first: Plan, hires: Plan, upscaler: str) -> dict:
    """The hires infotext keys in A1111's order (docs/a1111-semantics.md, "Key order")."""
    extra: dict = {}
    if _chosen(p.hr_checkpoint_name):
        extra["Hires checkpoint"] = hires.loaded.info.model_name
    if _chosen(p.hr_sampler_name) and hires.sampler.label != first.sampler.label:
        extra["Hires sampler"] = hires.sampler.label
    if hires.prompts[0] != first.prompts[0]:
        extra["Hires prompt"] = hires.prompts[0]
    if hires.negative_prompts[0] != first.negative_prompts[0]:
        extra["Hires negative prompt"] = hires.negative_prompts[0]
    if _chosen(p.hr_scheduler) and hires.scheduler.label != first.scheduler.label:
        extra["Hires schedule type"] = hires.scheduler.label
    if p.hr_resize_x == 0 and p.hr_resize_y == 0:
        extra["Hires upscale"] = p.hr_scale
    else:
        extra["Hires resize"] = f"{p.hr_resize_x}x{p.hr_resize_y}"
    if p.hr_second_pass_steps:
        extra["Hires steps"] = p.hr_second_pass_steps
    extra["Hires upscaler"] = upscaler
    return extra
