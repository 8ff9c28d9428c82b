"""txt2img: from a validated request to saved images with their infotext.

`txt2img(runtime, params)` is a generator: it yields one `Progress` per sampling step
and returns a `GenerationResult`. Whoever drives it (the job queue, a test) may send
back `"skip"` (end the current batch, decode what it has) or `"interrupt"` (end the
job after decoding the current batch). Nothing here touches shared state: settings
are a per-request copy and the model is only read.

The order of work follows A1111 (a1111.md §a.3, §e, §f): seeds for the whole job,
then per batch: conditioning, sigmas, first noise from per-image generators, the
sampler loop, (the hires-fix pass, `modules/hires.py`), VAE decode, infotext, save.

`sample_batch` is the sampling core shared with img2img and the hires pass: given a
`LatentStart` it starts from an init latent on A1111's truncated schedule
(a1111.md f.4) instead of pure noise, with an optional inpainting mask and the extra
input channels of inpainting models.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Generator

import torch
from PIL import Image

from modules import images as image_io
from modules.conditioning.conditioner import ConditioningSettings
from modules.conditioning.sdxl import SizeConditioning
from modules.devices import execution_device
from modules.infotext import GenerationInfo, create_infotext
from modules.jobs import Command, Progress
from modules.networks.activate import ActiveNetworks, NetworkRegistry, activate_networks
from modules.params import GenerationParams, GenerationResult, ParamsError, Txt2ImgParams
from modules.previews import cheap_preview, preview_due
from modules.prompt_parser import extract_extra_networks, strip_comments
from modules.refiner import ModelSwitch, SwitchTarget, prepare_refiner, refiner_plan
from modules.refiner import infotext_params as refiner_infotext
from modules.sampling import registry as R
from modules.sampling.cfg import CFGDenoiser, InpaintBlend
from modules.sampling.denoiser import Denoiser, LCMDenoiser
from modules.scripts.base import BatchInfo, PostprocessBatch, PostprocessImage, SamplingInfo
from modules.scripts.run import ScriptRun, script_run_for
from modules.seeds import ImageRNG, batch_seeds, fix_seed
from modules.settings import Settings
from modules.vae_codec import decode_latents as vae_decode_latents


@dataclass
class Plan:
    """Everything fixed for a whole job before the first batch runs."""

    params: Txt2ImgParams
    settings: Settings
    loaded: object  # modules.models.manager.LoadedModel
    sampler: R.SamplerSpec
    scheduler: R.SchedulerSpec
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    warnings: list[str]
    networks: ActiveNetworks | None = None  # LoRA-patched U-Net / conditioner, embeddings
    scripts: ScriptRun = field(default_factory=ScriptRun.empty)  # always-on scripts' hooks
    kind: str = "txt2img"  # picks the output folder setting (outdir_<kind>_samples)
    passes: int = 1  # sampling passes per batch (2 with hires fix): progress job_count
    info_fields: dict = field(default_factory=dict)  # extra GenerationInfo fields
    token_merging: float = 0.0  # ToMe ratio of this plan's sampling (modules/nn/token_merging.py)
    extra_params: dict = field(default_factory=dict)  # infotext keys before the sampler's
    refiner: object | None = None  # modules.refiner.Refiner taking over part-way


@dataclass
class LatentStart:
    """Where img2img and the hires pass start: an init latent instead of pure noise.

    `steps` is the requested step count; the schedule follows A1111's rule for
    `denoising_strength` (`explicit_steps`: the hires pass, or `img2img_fix_steps`).
    `keep` is 1 where the init latent must be kept (outside an inpainting mask).
    `image_cond` holds the extra U-Net input channels of inpainting models.
    """

    init_latent: torch.Tensor
    denoising_strength: float
    steps: int
    explicit_steps: bool = False
    noise_multiplier: float = 1.0
    keep: torch.Tensor | None = None
    image_cond: torch.Tensor | None = None
    rng: ImageRNG | None = None  # the noise source; a fresh one for the batch by default


def plan_txt2img(runtime, params: Txt2ImgParams) -> Plan:
    """Validate, resolve names and seeds, pick the model: everything that can fail early."""
    params.validate()
    settings = runtime.settings.current.with_overrides(params.override_settings)
    sampler, scheduler = R.resolve_sampler(params.sampler_name, params.scheduler)
    if R.uses_timestep_grid(sampler, scheduler) and params.steps < 2:
        # A1111's timestep grid with N steps runs N - 1 updates: one step would be none.
        raise ParamsError("steps", f"{sampler.label} on its own schedule needs at least 2 steps")
    runtime.ready.wait()
    loaded = runtime.models.get(params.override_settings.get("sd_model_checkpoint"))
    loaded = runtime.models.with_vae(loaded, settings.sd_vae)
    count = params.batch_size * params.n_iter
    seed, subseed = fix_seed(params.seed), fix_seed(params.subseed)
    seeds, subseeds = batch_seeds(seed, subseed, params.subseed_strength, count)
    plan = Plan(params=params, settings=settings, loaded=loaded, sampler=sampler,
                scheduler=scheduler, seeds=seeds, subseeds=subseeds,
                prompts=[params.prompt] * count, negative_prompts=[params.negative_prompt] * count,
                warnings=[], token_merging=settings.token_merging_ratio)
    plan.networks = activate_networks(
        runtime.networks or NetworkRegistry.for_paths(runtime.paths, runtime.models.hash_cache),
        loaded, plan.prompts, plan.negative_prompts, comments=settings.enable_prompt_comments)
    plan.warnings += plan.networks.warnings
    plan.refiner = prepare_refiner(runtime, plan)
    if plan.refiner is not None:
        plan.extra_params.update(refiner_infotext(plan.refiner, settings,
                                                  hires=getattr(params, "enable_hr", False)))
    plan.scripts = script_run_for(runtime, params, plan.warnings)
    return plan


def txt2img(runtime, params: Txt2ImgParams) -> Generator[Progress, Command, GenerationResult]:
    """Run a txt2img job; see the module docstring for the protocol."""
    if params.script_name:  # a selectable script replaces the normal processing
        from modules.scripts.selected import run_selected

        return (yield from run_selected(runtime, params, is_img2img=False, process=txt2img))
    plan = plan_txt2img(runtime, params)
    plan.scripts.call("before_process", plan)
    plan.scripts.call("process", plan)
    result = GenerationResult(images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                              negative_prompts=[], warnings=plan.warnings)
    result.extra.update(sd_model_name=plan.loaded.info.model_name,
                        sd_model_hash=plan.loaded.shorthash, sampler_name=plan.sampler.label,
                        clip_skip=plan.settings.CLIP_stop_at_last_layers)
    size = params.batch_size
    if params.enable_hr:
        from modules import hires  # hires imports this module

        hires_pass = hires.prepare(runtime, plan)
    for batch in range(params.n_iter):
        part = slice(batch * size, (batch + 1) * size)
        plan.scripts.call("process_batch", plan, BatchInfo(batch, plan.prompts[part],
                                                           plan.seeds[part], plan.subseeds[part]))
        finished = ([params.firstpass_image.convert("RGB")] * size
                    if params.firstpass_image is not None else None)
        if finished is None:
            latents, command = yield from sample_batch(plan, part, job_no=batch * plan.passes)
        else:  # hires fix on a finished picture: it stands in for the first pass
            latents, command = None, None
        final = plan
        if params.enable_hr and command is None:  # a skipped first pass keeps its size
            latents, command = yield from hires_pass.run(part, latents, job_no=batch * 2 + 1,
                                                         images=finished)
            final = hires_pass.plan
        collect_batch(runtime, final, part, latents, result, batch_index=batch)
        if command == "interrupt":
            result.interrupted = True
            break
    plan.scripts.call("postprocess", plan, result)
    return result


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
        x = start.init_latent.to(device) + noise * float(sigmas[0])
    denoiser = make_denoiser(plan, device)
    image_cond = start.image_cond if start is not None else None
    if image_cond is None and family.is_inpainting:
        from modules.image_conditioning import txt2img_image_cond

        image_cond = txt2img_image_cond(loaded, x.shape, settings)
    hooks = plan.scripts.cfg_hooks()
    cfg = CFGDenoiser(
        denoiser, conds, unconds, p.cfg_scale,
        total_steps=R.prompt_schedule_steps(plan.sampler, steps),
        image_cond=None if image_cond is None else image_cond.to(device),
        inpaint=None if start is None or start.keep is None else InpaintBlend(
            init_latent=start.init_latent.to(device), mask=start.keep.to(device)),
        s_min_uncond=p.s_min_uncond if p.s_min_uncond is not None else settings.s_min_uncond,
        skip_early_cond=settings.skip_early_cond,
        cfg_scale_multiplier=plan.sampler.cfg_scale_multiplier,
        record_uncond=plan.sampler.record_uncond,
        hooks=hooks,
    )
    if plan.refiner is not None:
        cfg.switch = refiner_switch(plan, part, device, x.shape, image_cond)
    noise_sampler = (R.default_noise_sampler(plan.sampler, x, sigmas, generators=None,
                                             seeds=plan.seeds[part])
                     if plan.sampler.brownian_noise else rng.noise_sampler(like=x))
    sampling = SamplingInfo(x=x, sigmas=sigmas, conds=conds, unconds=unconds,
                            batch_number=part.start // max(1, p.batch_size), cfg_hooks=hooks)
    plan.scripts.call("process_before_every_sampling", plan, sampling)
    x = sampling.x
    generator = R.start_sampler(plan.sampler, cfg, x, sigmas, options=sampler_options(p, settings),
                                noise_sampler=noise_sampler)
    latents, command = yield from drive_sampler(generator, job_no=job_no,
                                                job_count=p.n_iter * plan.passes,
                                                steps=len(sigmas) - 1, preview=preview_maker(plan))
    latents = latents * R.final_latent_scale(plan.sampler, plan.scheduler, float(sigmas[-2]))
    if start is not None and start.keep is not None:
        keep = start.keep.to(latents)
        latents = latents * (1 - keep) + start.init_latent.to(latents) * keep
    return latents, command


def make_denoiser(plan: Plan, device) -> Denoiser:
    """The unguided D(x, sigma) of the plan's (LoRA-patched) U-Net on its sigma table."""
    unet, loaded = plan.networks.unet, plan.loaded
    if plan.token_merging > 0:
        unet = partial(unet, token_merging=plan.token_merging)
    if plan.sampler.lcm:
        return LCMDenoiser(unet, sigmas=loaded.sigmas.to(device), prediction=loaded.family.prediction)
    return Denoiser(unet, sigmas=loaded.sigmas.to(device), prediction=loaded.family.prediction,
                    quantize=plan.sampler.quantize)


def refiner_switch(plan: Plan, part: slice, device, shape, image_cond) -> ModelSwitch:
    """The switch to the plan's refiner; its conds are encoded only if it takes over."""
    refiner = plan.refiner

    def build() -> SwitchTarget:
        seen = refiner_plan(plan, refiner)
        conds, unconds = encode_prompts(seen, part)
        cond = image_cond if refiner.loaded.family.is_inpainting == plan.loaded.family.is_inpainting else None
        if cond is None and refiner.loaded.family.is_inpainting:
            from modules.image_conditioning import txt2img_image_cond

            cond = txt2img_image_cond(refiner.loaded, shape, plan.settings)
        return SwitchTarget(make_denoiser(seen, device), conds, unconds,
                            None if cond is None else cond.to(device))

    return ModelSwitch(switch_at=refiner.switch_at, by_steps=refiner.by_steps,
                       base_sigmas=plan.loaded.sigmas, build=build)


def batch_sigmas(plan: Plan, start: LatentStart | None, device) -> torch.Tensor:
    """The full schedule, or for a `LatentStart` the tail A1111's img2img rule runs."""
    loaded, options = plan.loaded, schedule_options(plan.settings, plan.loaded.family)
    if start is None:
        return R.compute_sigmas(plan.sampler, plan.scheduler, plan.params.steps,
                                loaded.sigmas, options).to(device)
    fix = start.explicit_steps or plan.settings.img2img_fix_steps
    total, _ = R.img2img_steps(start.steps, start.denoising_strength, fix)
    if total == 0:
        return torch.zeros(1, device=device)
    sigmas = R.compute_sigmas(plan.sampler, plan.scheduler, total, loaded.sigmas, options)
    return R.img2img_sigmas(sigmas, start.steps, start.denoising_strength, fix).to(device)


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


def drive_sampler(generator, *, job_no: int, job_count: int, steps: int, preview=None):
    """Step a sampler; a skip or interrupt ends it with the last denoised estimate.

    `preview(step_number, denoised)` may return a picture for the Progress event.
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
    is_sdxl = plan.loaded.family.is_sdxl

    def make(step: int, denoised: torch.Tensor):
        if preview_due(step, settings.show_progress_every_n_steps, True):
            return cheap_preview(denoised, is_sdxl=is_sdxl)
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


def schedule_options(settings: Settings, family) -> R.ScheduleOptions:
    return R.ScheduleOptions(sigma_min=settings.sigma_min, sigma_max=settings.sigma_max,
                             rho=settings.rho, beta_alpha=settings.beta_dist_alpha,
                             beta_beta=settings.beta_dist_beta,
                             always_discard_next_to_last_sigma=settings.always_discard_next_to_last_sigma,
                             is_sdxl=family.is_sdxl)


def sampler_options(p: GenerationParams, settings: Settings) -> R.SamplerOptions:
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return R.SamplerOptions(
        eta=p.eta, eta_ancestral=settings.eta_ancestral, eta_ddim=settings.eta_ddim,
        s_churn=pick(p.s_churn, settings.s_churn), s_tmin=pick(p.s_tmin, settings.s_tmin),
        s_tmax=pick(p.s_tmax, settings.s_tmax) or float("inf"),
        s_noise=pick(p.s_noise, settings.s_noise), unipc_order=settings.uni_pc_order)


def initial_scale(plan: Plan, sigma_first: float, settings: Settings) -> float:
    if settings.sgm_noise_multiplier and not R.uses_timestep_grid(plan.sampler, plan.scheduler):
        return (sigma_first**2 + 1) ** 0.5
    return R.initial_noise_scale(plan.sampler, plan.scheduler, sigma_first)


def decode_latents(loaded, latents: torch.Tensor, settings: Settings | None = None
                   ) -> list[Image.Image]:
    """VAE decode with the family's scale factor (tiled when `settings` call for it)."""
    return vae_decode_latents(loaded, latents, settings)


def collect_batch(runtime, plan: Plan, part: slice, latents: torch.Tensor,
                  result: GenerationResult, *, batch_index: int,
                  finish: Callable[[int, Image.Image], Image.Image] | None = None) -> None:
    """Decode, (finish: img2img's colour correction and overlay), infotexts, save."""
    decoded = PostprocessBatch(decode_latents(plan.loaded, latents, plan.settings), batch_index)
    plan.scripts.call("postprocess_batch", plan, decoded)
    for offset, image in enumerate(decoded.images):
        index = part.start + offset
        if finish is not None:
            image = finish(index, image)
        hooked = PostprocessImage(image=image, index=index)
        plan.scripts.call("postprocess_image", plan, hooked)
        image = hooked.image
        infotext = infotext_for(runtime, plan, index)
        result.images.append(image)
        result.infotexts.append(infotext)
        result.seeds.append(plan.seeds[index])
        result.subseeds.append(plan.subseeds[index])
        result.prompts.append(plan.prompts[index])
        result.negative_prompts.append(plan.negative_prompts[index])
        if plan.settings.samples_save and not plan.params.do_not_save_samples:
            path = str(save(runtime, plan, image, index, infotext, batch_index))
            result.saved_paths.append(path)
            plan.scripts.image_saved(image, plan, path, infotext)


def infotext_for(runtime, plan: Plan, index: int) -> str:
    p, settings, loaded = plan.params, plan.settings, plan.loaded
    info = GenerationInfo(
        steps=p.steps, sampler_name=plan.sampler.label,
        scheduler=R.effective_schedule_label(plan.sampler, plan.scheduler),
        cfg_scale=p.cfg_scale, seed=plan.seeds[index], width=p.width, height=p.height,
        model_hash=loaded.shorthash if settings.add_model_hash_to_info else None,
        model_name=loaded.info.model_name if settings.add_model_name_to_info else None,
        vae_hash=(loaded.vae_sha256 or "")[:10] or None, vae_name=loaded.vae_name,
        subseed=plan.subseeds[index], subseed_strength=p.subseed_strength,
        seed_resize_from_w=p.seed_resize_from_w, seed_resize_from_h=p.seed_resize_from_h,
        clip_skip=settings.CLIP_stop_at_last_layers,
        eta_noise_seed_delta=settings.eta_noise_seed_delta,
        sampler_uses_ensd=plan.sampler.uses_ensd and (p.eta if p.eta is not None
                                                      else settings.eta_ancestral) != 0,
        randn_source=settings.randn_source, tiling=p.tiling,
        **{"token_merging_ratio": plan.token_merging, **plan.info_fields},
    )
    version = runtime.version if settings.add_version_to_infotext else None
    return create_infotext(info, prompt=plan.prompts[index],
                           negative_prompt=plan.negative_prompts[index],
                           extra={**plan.extra_params, **plan.networks.extra_params,
                                  **sampler_extra_params(plan), **compile_params(runtime)},
                           version=version)


def compile_params(runtime) -> dict:
    """`Torch compile` in the infotext when the U-Net runs compiled (--compile, --cuda-graphs)."""
    mode = getattr(runtime.models, "compile_mode", None)
    labels = {"default": "inductor", "reduce-overhead": "inductor + CUDA graphs"}
    return {"Torch compile": labels.get(mode, mode)} if mode else {}


def sampler_extra_params(plan: Plan) -> dict:
    """Sampler settings A1111 writes when they differ from their defaults."""
    settings, spec, extra = plan.settings, plan.sampler, {}
    eta = plan.params.eta if plan.params.eta is not None else (
        settings.eta_ancestral if spec.eta_source == "ancestral" else settings.eta_ddim)
    if spec.eta_source == "ancestral" and eta != 1.0:
        extra["Eta"] = eta
    if spec.eta_source == "ddim" and eta != 0.0:
        extra["Eta DDIM"] = eta
    for name, key, default in (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0),
                               ("s_tmax", "Sigma tmax", 0.0), ("s_noise", "Sigma noise", 1.0)):
        value = getattr(plan.params, name)
        value = getattr(settings, name) if value is None else value
        if name in spec.extra_params and value != default:
            extra[key] = value
    for name, key in (("sigma_min", "Schedule min sigma"), ("sigma_max", "Schedule max sigma"),
                      ("rho", "Schedule rho")):
        if getattr(settings, name):
            extra[key] = getattr(settings, name)
    if settings.always_discard_next_to_last_sigma:
        extra["Discard penultimate sigma"] = True
    if settings.sgm_noise_multiplier:
        extra["SGM noise multiplier"] = True
    if settings.s_min_uncond or plan.params.s_min_uncond:
        extra["NGMS"] = plan.params.s_min_uncond or settings.s_min_uncond
    if settings.skip_early_cond:
        extra["Skip Early CFG"] = settings.skip_early_cond
    return extra


def save(runtime, plan: Plan, image: Image.Image, index: int, infotext: str, batch_index: int):
    settings = plan.settings
    root = runtime.paths.output_dir(getattr(settings, f"outdir_{plan.kind}_samples"))
    directory = root / dt.date.today().strftime("%Y-%m-%d") if settings.save_to_dirs else root
    fields = image_io.FilenameFields(
        seed=plan.seeds[index], prompt=plan.prompts[index], width=image.width,
        height=image.height, sampler=plan.sampler.label, steps=plan.params.steps,
        cfg_scale=plan.params.cfg_scale, model_name=plan.loaded.info.model_name,
        model_hash=plan.loaded.shorthash, batch_number=None, generation_number=index)
    pattern = settings.samples_filename_pattern or ("[seed]" if settings.save_to_dirs
                                                    else "[seed]-[prompt_spaces]")
    return image_io.save_image(image, directory, seed=plan.seeds[index],
                               prompt=plan.prompts[index], infotext=infotext,
                               extension=settings.samples_format, pattern=pattern, fields=fields,
                               jpeg_quality=settings.jpeg_quality,
                               write_metadata=settings.enable_pnginfo)
