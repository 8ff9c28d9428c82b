"""The plan of a generation job: everything fixed before the first batch runs.

`plan_txt2img` validates the request, resolves sampler and scheduler names, waits for
the first model load, picks the model (and the job's VAE), draws the job's seeds
(A1111's order: docs/a1111-semantics.md, "Seeds"), activates the prompt's extra networks
on per-job clones and the refiner, and collects the always-on scripts' hooks. img2img
and the hires pass build on the same `Plan`; `LatentStart` is where they begin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules.jobs import Cancellation, current_cancellation
from modules.models.storage_option import storage_infotext
from modules.networks.activate import ActiveNetworks, NetworkRegistry, activate_networks
from modules.pipeline.flow_plan import prepare_flow_plan
from modules.pipeline.limits import PixelBudget, check_pixel_budget
from modules.pipeline.params import GenerationParams, ParamsError, Txt2ImgParams
from modules.pipeline.refiner import infotext_params as refiner_infotext
from modules.pipeline.refiner import prepare_refiner
from modules.pipeline.tiling import apply_tiling
from modules.sampling import registry as R
from modules.sampling.seeds import ImageRNG, batch_seeds, fix_seed
from modules.scripts.run import ScriptRun, script_run_for
from modules.settings import Settings


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
    refiner: object | None = None  # modules.pipeline.refiner.Refiner taking over part-way
    # A script's wrapper of the VAE decoder's middle attention for this job's decodes
    # (`AutoencoderKL.decode(mid_attention=...)`; HyperTile's VAE option), or None.
    vae_attention: object | None = None
    # Soft inpainting's blend (`InpaintBlend.blend`, scripts/builtin/soft_inpainting.py).
    inpaint_blend: object | None = None
    second_pass: bool = False  # the hires fix's sampling plan (scripts may act on one pass)
    # The job's stop requests, checked inside long steps (U-Net blocks, attention, VAE).
    cancel: Cancellation = field(default_factory=Cancellation)


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
    check_pixel_budget(params, PixelBudget.from_args(runtime.args))
    settings = runtime.settings.for_request(params.override_settings)
    sampler, scheduler = R.resolve_sampler(params.sampler_name, params.scheduler)
    if R.uses_timestep_grid(sampler, scheduler) and params.steps < 2:
        # A1111's timestep grid with N steps runs N - 1 updates: one step would be none.
        raise ParamsError("steps", f"{sampler.label} on its own schedule needs at least 2 steps")
    runtime.ready.wait()
    loaded = runtime.models.get(params.override_settings.get("sd_model_checkpoint"),
                                modules=list(settings.forge_additional_modules),
                                storage=settings.forge_unet_storage_dtype)
    loaded = runtime.models.with_vae(loaded, settings.sd_vae)
    count = params.batch_size * params.n_iter
    seed, subseed = fix_seed(params.seed), fix_seed(params.subseed)
    seeds, subseeds = batch_seeds(seed, subseed, params.subseed_strength, count)
    plan = Plan(params=params, settings=settings, loaded=loaded, sampler=sampler,
                scheduler=scheduler, seeds=seeds, subseeds=subseeds,
                prompts=[params.prompt] * count, negative_prompts=[params.negative_prompt] * count,
                warnings=[], token_merging=settings.token_merging_ratio,
                cancel=current_cancellation())
    prepare_flow_plan(runtime, plan)  # SD3.x / Flux.1: size check, conditioner, infotext
    plan.extra_params.update(storage_infotext(plan.loaded))  # Diffusion in Low Bits
    plan.networks = activate_networks(
        runtime.networks or NetworkRegistry.for_paths(runtime.paths, runtime.models.hash_cache),
        plan.loaded, plan.prompts, plan.negative_prompts, comments=settings.enable_prompt_comments)
    plan.warnings += plan.networks.warnings
    plan.refiner = prepare_refiner(runtime, plan)
    if plan.refiner is not None:
        plan.extra_params.update(refiner_infotext(plan.refiner, settings,
                                                  hires=getattr(params, "enable_hr", False)))
    if params.tiling:  # circular padding on per-job views (modules/pipeline/tiling.py)
        apply_tiling(plan)
    plan.scripts = script_run_for(runtime, params, plan.warnings)
    return plan


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
