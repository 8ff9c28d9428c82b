"""Sampling one batch: conditioning, sigmas, first noise, the sampler loop.

`sample_batch` is the core shared by txt2img, img2img and the hires pass: without a
`LatentStart` it starts from pure noise on the full schedule; with one it starts from
an init latent noised to the first sigma of the tail of the schedule that A1111's
img2img rule keeps (docs/a1111-semantics.md, "img2img"), with an optional inpainting
mask and the extra input channels of inpainting models. It is a generator: one
`Progress` per step, and whoever drives it may answer "skip" or "interrupt".
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import torch

from modules.conditioning.conditioner import ConditioningSettings
from modules.conditioning.prompt_parser import extract_extra_networks, strip_comments
from modules.conditioning.sdxl import SizeConditioning
from modules.devices import execution_device
from modules.jobs import Cancellation, JobInterrupted, Progress
from modules.pipeline import flow_plan
from modules.pipeline.plan import LatentStart, Plan, sampler_options, schedule_options
from modules.pipeline.previews import family_preview, preview_due
from modules.pipeline.refiner import ModelSwitch, SwitchTarget, refiner_plan
from modules.sampling import registry as R
from modules.sampling.cfg import CFGDenoiser, InpaintBlend
from modules.sampling.denoiser import Denoiser, LCMDenoiser
from modules.sampling.flow import FlowDenoiser, flow_schedule, noised
from modules.sampling.seeds import ImageRNG
from modules.scripts.base import SamplingInfo
from modules.settings import Settings


def place(loaded, component: str) -> None:
    """Bring a component to the device before a phase (see models/offload.py)."""
    if getattr(loaded, "placer", None) is not None:
        loaded.placer.use(component)


def sample_batch(plan: Plan, part: slice, *, job_no: int, start: LatentStart | None = None):
    """Sample one batch; yields Progress, returns (latents, last command).

    Without `start` this is txt2img (pure noise on the full schedule); with it, the
    sampler starts from `start.init_latent` noised to the first sigma of the tail of
    the schedule that A1111's img2img rule keeps.
    """
    p, loaded, settings = plan.params, plan.loaded, plan.settings
    model, family = loaded.model, loaded.family
    device = execution_device(model.unet)  # the compute device, also when --medvram rests it
    steps = p.steps
    place(loaded, "text_encoders")  # --medvram / --lowvram: the phase's component first
    conds, unconds = encode_prompts(plan, part)
    place(loaded, "unet")
    sigmas = batch_sigmas(plan, start, device)
    if start is not None and len(sigmas) < 2:  # denoising 0 with exact steps: nothing to do
        return start.init_latent, None
    rng = (start.rng if start is not None and start.rng is not None
           else batch_rng(plan, part, device))
    if start is None:
        x = rng.first().to(device) * initial_scale(plan, float(sigmas[0]), settings)
    else:
        noise = rng.next().to(device) * start.noise_multiplier
        init = start.init_latent.to(device)
        # Flow models: on the straight path (1 - sigma) init + sigma noise; else init + sigma noise.
        x = (noised(init, noise, float(sigmas[0])) if family.is_flow
             else init + noise * float(sigmas[0]))
    denoiser = make_denoiser(plan, device)
    image_cond = start.image_cond if start is not None else None
    if image_cond is None and family.is_inpainting:
        from modules.pipeline.image_conditioning import txt2img_image_cond

        try:
            image_cond = txt2img_image_cond(loaded, x.shape, settings, cancel=plan.cancel)
        except JobInterrupted as stopped:  # stopped while encoding: no step, no latents
            return None, plan.cancel.take() or stopped.command
    hooks = plan.scripts.cfg_hooks()
    cfg = CFGDenoiser(
        denoiser, conds, unconds, p.cfg_scale,
        total_steps=R.prompt_schedule_steps(plan.sampler, steps),
        image_cond=None if image_cond is None else image_cond.to(device),
        inpaint=None if start is None or start.keep is None else InpaintBlend(
            init_latent=start.init_latent.to(device), mask=start.keep.to(device),
            blend=plan.inpaint_blend),
        s_min_uncond=p.s_min_uncond if p.s_min_uncond is not None else settings.s_min_uncond,
        skip_early_cond=settings.skip_early_cond,
        cfg_scale_multiplier=plan.sampler.cfg_scale_multiplier,
        record_uncond=plan.sampler.record_uncond,
        skip_uncond_at_scale_one=family.is_flow,
        hooks=hooks,
    )
    if plan.refiner is not None:
        cfg.switch = refiner_switch(plan, part, device, x.shape, image_cond)
    noise_sampler = (R.default_noise_sampler(plan.sampler, x, sigmas, generators=None,
                                             seeds=plan.seeds[part])
                     if plan.sampler.brownian_noise else rng.noise_sampler(like=x))
    sampling = SamplingInfo(x=x, sigmas=sigmas, conds=conds, unconds=unconds,
                            batch_number=part.start // max(1, p.batch_size), cfg_hooks=hooks,
                            denoiser=cfg, start=start)
    plan.scripts.call("process_before_every_sampling", plan, sampling)
    x = sampling.x
    generator = R.start_sampler(plan.sampler, sampling.denoiser, x, sigmas,
                                options=sampler_options(p, settings), noise_sampler=noise_sampler)
    latents, command = yield from drive_sampler(generator, job_no=job_no,
                                                job_count=p.n_iter * plan.passes,
                                                steps=len(sigmas) - 1, preview=preview_maker(plan),
                                                cancel=plan.cancel)
    if latents is None:  # stopped inside the first step: nothing worth decoding
        return None, command
    latents = latents * R.final_latent_scale(plan.sampler, plan.scheduler, float(sigmas[-2]),
                                             flow=family.is_flow)
    if start is not None and start.keep is not None:
        keep = start.keep.to(latents)
        if plan.inpaint_blend is not None:  # soft inpainting: its final blend
            latents = plan.inpaint_blend(start.init_latent.to(latents), latents, keep, None)
        else:
            latents = latents * (1 - keep) + start.init_latent.to(latents) * keep
    return latents, command


def make_denoiser(plan: Plan, device) -> Denoiser | FlowDenoiser:
    """The unguided D(x, sigma) of the plan's (LoRA-patched) U-Net on its sigma table."""
    unet, loaded = plan.networks.unet, plan.loaded
    if loaded.family.is_flow:  # a velocity-predicting transformer (SD3, Flux.1)
        # Flux.1 dev also takes its distilled guidance (`flow_plan.model_kwargs`).
        unet = partial(unet, cancel=plan.cancel, **flow_plan.model_kwargs(plan))
        return FlowDenoiser(unet, sigmas=loaded.sigmas.to(device),
                            timestep_scale=loaded.family.flow.timestep_scale)
    if plan.token_merging > 0:
        unet = partial(unet, token_merging=plan.token_merging)
    unet = partial(unet, cancel=plan.cancel)  # checked between blocks and attention chunks
    if plan.sampler.lcm:
        return LCMDenoiser(unet, sigmas=loaded.sigmas.to(device),
                           prediction=loaded.family.prediction)
    return Denoiser(unet, sigmas=loaded.sigmas.to(device), prediction=loaded.family.prediction,
                    quantize=plan.sampler.quantize)


def refiner_switch(plan: Plan, part: slice, device, shape, image_cond) -> ModelSwitch:
    """The switch to the plan's refiner; its conds are encoded only if it takes over."""
    refiner = plan.refiner

    def build() -> SwitchTarget:
        seen = refiner_plan(plan, refiner)
        conds, unconds = encode_prompts(seen, part)
        same_kind = refiner.loaded.family.is_inpainting == plan.loaded.family.is_inpainting
        cond = image_cond if same_kind else None
        if cond is None and refiner.loaded.family.is_inpainting:
            from modules.pipeline.image_conditioning import txt2img_image_cond

            cond = txt2img_image_cond(refiner.loaded, shape, plan.settings,
                                      cancel=plan.cancel)
        return SwitchTarget(make_denoiser(seen, device), conds, unconds,
                            None if cond is None else cond.to(device))

    return ModelSwitch(switch_at=refiner.switch_at, by_steps=refiner.by_steps,
                       base_sigmas=plan.loaded.sigmas, build=build)


def batch_sigmas(plan: Plan, start: LatentStart | None, device) -> torch.Tensor:
    """The full schedule, or for a `LatentStart` the tail A1111's img2img rule runs."""
    loaded = plan.loaded
    options = flow_schedule_options(plan, start, schedule_options(plan.settings, loaded.family))
    if start is None:
        return R.compute_sigmas(plan.sampler, plan.scheduler, plan.params.steps,
                                loaded.sigmas, options).to(device)
    fix = start.explicit_steps or plan.settings.img2img_fix_steps
    total, _ = R.img2img_steps(start.steps, start.denoising_strength, fix)
    if total == 0:
        return torch.zeros(1, device=device)
    sigmas = R.compute_sigmas(plan.sampler, plan.scheduler, total, loaded.sigmas, options)
    return R.img2img_sigmas(sigmas, start.steps, start.denoising_strength, fix).to(device)


def flow_schedule_options(plan: Plan, start: LatentStart | None,
                          options: R.ScheduleOptions) -> R.ScheduleOptions:
    """A flow model's shift at this batch's image size (Flux.1 dev's depends on it)."""
    family = plan.loaded.family
    if not family.is_flow:
        return options
    if start is not None:
        height, width = (side * family.vae.downscale for side in start.init_latent.shape[-2:])
    else:
        width, height = plan.params.width, plan.params.height
    return replace(options, flow=flow_schedule(family.flow, width, height))


def batch_rng(plan: Plan, part: slice, device, *, width: int | None = None,
              height: int | None = None) -> ImageRNG:
    """The batch's per-image noise streams (A1111 ImageRNG) at the plan's latent size."""
    p, settings, family = plan.params, plan.settings, plan.loaded.family
    factor = family.vae.downscale  # 8 for every SD family
    shape = (family.latent_channels, (height or p.height) // factor, (width or p.width) // factor)
    return ImageRNG(shape=shape, seeds=plan.seeds[part], subseeds=plan.subseeds[part],
                    subseed_strength=p.subseed_strength, seed_resize_from_h=p.seed_resize_from_h,
                    seed_resize_from_w=p.seed_resize_from_w, source=settings.randn_source,
                    device=device, eta_noise_seed_delta=settings.eta_noise_seed_delta)


def drive_sampler(generator, *, job_no: int, job_count: int, steps: int, preview=None,
                  cancel: Cancellation | None = None):
    """Step a sampler; a skip or interrupt ends it with the last denoised estimate.

    `preview(step_number, denoised)` may return a picture for the Progress event. A skip
    or interrupt that arrives inside a step (`cancel.check()` in the U-Net raises
    `JobInterrupted`) ends it the same way at once; stopped before any step ended, there
    is no estimate and the latents are None (the batch then adds no image).
    """
    last = None
    while True:
        # Grad mode is thread state: hold inference mode only while the sampler runs,
        # never across our own `yield`, or it would leak into whoever drives us.
        try:
            with torch.inference_mode():
                step = next(generator)
        except StopIteration as stop:
            return stop.value, None
        except JobInterrupted as stopped:
            generator.close()
            command = (cancel.take() if cancel is not None else None) or stopped.command
            return (last.denoised if last is not None else None), command
        last = step
        picture = preview(step.index + 1, step.denoised) if preview is not None else None
        command = yield Progress(step=step.index + 1, total_steps=steps, job_no=job_no,
                                 job_count=job_count, preview=picture)
        if command in ("skip", "interrupt"):
            generator.close()
            return last.denoised, command


def preview_maker(plan: Plan):
    """The live-preview callback for this job's settings (None when previews are off)."""
    settings = plan.settings
    if not settings.live_previews_enable or settings.show_progress_every_n_steps <= 0:
        return None
    family = plan.loaded.family

    def make(step: int, denoised: torch.Tensor):
        if preview_due(step, settings.show_progress_every_n_steps, True):
            return family_preview(denoised, family)
        return None
    return make


def encode_prompts(plan: Plan, part: slice):
    """Positive MultiConds and negative ScheduledConds for one batch."""
    p, settings, loaded = plan.params, plan.settings, plan.loaded
    options = dict(
        steps=R.prompt_schedule_steps(plan.sampler, p.steps),
        settings=ConditioningSettings(
            emphasis=settings.emphasis, clip_skip=settings.CLIP_stop_at_last_layers,
            comma_padding_backtrack=settings.comma_padding_backtrack,
            use_old_scheduling=settings.use_old_scheduling),
        size=SizeConditioning(
            width=p.width, height=p.height, crop_top=settings.sdxl_crop_top,
            crop_left=settings.sdxl_crop_left,
            aesthetic_score=settings.sdxl_refiner_high_aesthetic_score,
            negative_aesthetic_score=settings.sdxl_refiner_low_aesthetic_score,
        ) if loaded.family.is_sdxl else None,
    )
    positives = [conditioning_text(text, settings, plan.warnings) for text in plan.prompts[part]]
    negatives = [conditioning_text(text, settings, plan.warnings)
                 for text in plan.negative_prompts[part]]
    networks = plan.networks
    options.update(embeddings=networks.embeddings, cache_token=networks.cache_token)
    with torch.inference_mode():
        conds = networks.conditioner.encode_batch(positives, **options)
        unconds = networks.conditioner.encode_negative_batch(negatives, **options)
    return conds, unconds


def conditioning_text(prompt: str, settings: Settings, warnings: list[str]) -> str:
    """The text the encoders see: comments and extra-network tags removed (the tags
    were read by `activate_networks`, which also reported unknown ones)."""
    text = strip_comments(prompt) if settings.enable_prompt_comments else prompt
    return extract_extra_networks(text)[0]


def extra_network_tags(text: str) -> list[str]:
    """Each extra-network tag of `text` as `<name:first argument>` (for messages)."""
    return [f"<{tag.name}:{tag.items[0] if tag.items else ''}>"
            for tag in extract_extra_networks(text)[1]]


def initial_scale(plan: Plan, sigma_first: float, settings: Settings) -> float:
    if plan.loaded.family.is_flow:  # x = sigma * noise: the noise itself at sigma_max = 1
        return R.initial_noise_scale(plan.sampler, plan.scheduler, sigma_first, flow=True)
    if settings.sgm_noise_multiplier and not R.uses_timestep_grid(plan.sampler, plan.scheduler):
        return (sigma_first**2 + 1) ** 0.5
    return R.initial_noise_scale(plan.sampler, plan.scheduler, sigma_first)
