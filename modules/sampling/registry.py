"""The sampler and scheduler tables, under A1111's labels and aliases.

The tables: docs/a1111-semantics.md, "Sampler table" and "Schedule types".

A `SamplerSpec` is one row of A1111's sampler table: the function, its aliases and the
options that change how it is driven (default scheduler, second order, Brownian noise,
discarding the penultimate sigma, which settings it receives). `resolve_sampler`
understands legacy combined names ("DPM++ 2M Karras"), `compute_sigmas` builds the
schedule, `img2img_sigmas` cuts it for img2img and hires (docs/a1111-semantics.md, "Step rule").

DDIM, DDIM CFG++, PLMS and UniPC run in sigma space (`samplers_timestep.py`). On the
Automatic scheduler they walk A1111's timestep grids, start from unit-variance noise and
stop at the grid's last (non-zero) sigma; `initial_noise_scale` and `final_latent_scale`
convert between the latents so that results equal the timestep formulation. Other
schedulers are honoured for them too (A1111 ignores the choice there).

Rectified-flow models (SD3, Flux.1) pass their `flow.FlowSchedule` in
`ScheduleOptions.flow`: schedules then work on its shifted table (see `flow.py`),
Automatic means the sampler's default scheduler (DPM++ 2M: Karras, as the infotext says)
or else Simple, there is no timestep grid, and the first noise is not rescaled.
`start_sampler` passes `flow=True` to the sampler for a model whose `is_flow` is True,
so that ancestral / SDE / Restart / LCM noise is added on the flow path (`renoise.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from modules.sampling import flow as FL
from modules.sampling import schedules as S
from modules.sampling.base import Model, NoiseSampler, SamplerGen
from modules.sampling.denoiser import lcm_sigmas
from modules.sampling.noise import BrownianTreeNoiseSampler, randn_noise_sampler
from modules.sampling.samplers_dpm_solver import sample_dpm_adaptive, sample_dpm_fast
from modules.sampling.samplers_dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from modules.sampling.samplers_euler import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lms,
)
from modules.sampling.samplers_extra import sample_lcm, sample_restart
from modules.sampling.samplers_timestep import (
    sample_ddim,
    sample_ddim_cfgpp,
    sample_plms,
    sample_unipc,
)

SamplerFn = Callable[..., SamplerGen]
CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler as the UI, the API and the infotext know it."""

    label: str
    function: SamplerFn
    aliases: tuple[str, ...]
    default_scheduler: str | None = None
    second_order: bool = False
    uses_ensd: bool = False
    brownian_noise: bool = False
    discard_next_to_last_sigma: bool = False
    eta_source: Literal["ancestral", "ddim"] | None = None
    extra_params: tuple[str, ...] = ()
    fixed_kwargs: dict[str, Any] = field(default_factory=dict)
    timestep_grid: Literal["ddim", "unipc"] | None = None
    quantize: bool = True
    lcm: bool = False
    cfg_scale_multiplier: float = 1.0
    record_uncond: bool = False


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    label: str
    aliases: tuple[str, ...] = ()
    default_rho: float = -1.0
    need_model_sigmas: bool = False


SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", sample_dpmpp_2m, ("k_dpmpp_2m",), "karras"),
    SamplerSpec("DPM++ SDE", sample_dpmpp_sde, ("k_dpmpp_sde",), "karras", second_order=True,
                brownian_noise=True, eta_source="ancestral", extra_params=("s_noise",)),
    SamplerSpec("DPM++ 2M SDE", sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",), "exponential",
                brownian_noise=True, eta_source="ancestral", extra_params=("s_noise",)),
    SamplerSpec("DPM++ 2M SDE Heun", sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",), "exponential",
                brownian_noise=True, eta_source="ancestral", extra_params=("s_noise",),
                fixed_kwargs={"solver_type": "heun"}),
    SamplerSpec("DPM++ 2S a", sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",), "karras",
                second_order=True, uses_ensd=True, eta_source="ancestral",
                extra_params=("s_noise",)),
    SamplerSpec("DPM++ 3M SDE", sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",), "exponential",
                discard_next_to_last_sigma=True, brownian_noise=True, eta_source="ancestral",
                extra_params=("s_noise",)),
    SamplerSpec("Euler a", sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"),
                uses_ensd=True, eta_source="ancestral"),
    SamplerSpec("Euler", sample_euler, ("k_euler",), extra_params=CHURN),
    SamplerSpec("LMS", sample_lms, ("k_lms",)),
    SamplerSpec("Heun", sample_heun, ("k_heun",), second_order=True, extra_params=CHURN),
    SamplerSpec("DPM2", sample_dpm_2, ("k_dpm_2",), "karras", discard_next_to_last_sigma=True,
                second_order=True, extra_params=CHURN),
    SamplerSpec("DPM2 a", sample_dpm_2_ancestral, ("k_dpm_2_a",), "karras",
                discard_next_to_last_sigma=True,
                uses_ensd=True, second_order=True, eta_source="ancestral",
                extra_params=("s_noise",)),
    SamplerSpec("DPM fast", sample_dpm_fast, ("k_dpm_fast",), uses_ensd=True,
                eta_source="ancestral", extra_params=("s_noise",)),
    SamplerSpec("DPM adaptive", sample_dpm_adaptive, ("k_dpm_ad",), uses_ensd=True,
                eta_source="ancestral"),
    SamplerSpec("Restart", sample_restart, ("restart",), "karras", second_order=True),
    SamplerSpec("DDIM", sample_ddim, ("ddim",), eta_source="ddim", timestep_grid="ddim"),
    SamplerSpec("DDIM CFG++", sample_ddim_cfgpp, ("ddim_cfgpp",), eta_source="ddim",
                timestep_grid="ddim", cfg_scale_multiplier=1 / 12.5, record_uncond=True),
    SamplerSpec("PLMS", sample_plms, ("plms",), timestep_grid="ddim"),
    SamplerSpec("UniPC", sample_unipc, ("unipc",), timestep_grid="unipc", quantize=False),
    SamplerSpec("LCM", sample_lcm, ("k_lcm",), lcm=True),
)

SCHEDULERS: tuple[SchedulerSpec, ...] = (
    SchedulerSpec("automatic", "Automatic"),
    SchedulerSpec("uniform", "Uniform", need_model_sigmas=True),
    SchedulerSpec("karras", "Karras", default_rho=7.0),
    SchedulerSpec("exponential", "Exponential"),
    SchedulerSpec("polyexponential", "Polyexponential", default_rho=1.0),
    SchedulerSpec("sgm_uniform", "SGM Uniform", ("SGMUniform",), need_model_sigmas=True),
    SchedulerSpec("kl_optimal", "KL Optimal"),
    SchedulerSpec("align_your_steps", "Align Your Steps"),
    SchedulerSpec("simple", "Simple", need_model_sigmas=True),
    SchedulerSpec("normal", "Normal", need_model_sigmas=True),
    SchedulerSpec("ddim", "DDIM", need_model_sigmas=True),
    SchedulerSpec("beta", "Beta", need_model_sigmas=True),
)
AUTOMATIC = SCHEDULERS[0]


def _names(spec: SamplerSpec | SchedulerSpec) -> list[str]:
    extra = [spec.name] if isinstance(spec, SchedulerSpec) else []
    return [spec.label, *extra, *spec.aliases]


def find_sampler(name: str) -> SamplerSpec:
    """A sampler by label or alias (exact, then case-insensitive)."""
    for exact in (True, False):
        for spec in SAMPLERS:
            if any(n == name if exact else n.lower() == name.lower() for n in _names(spec)):
                return spec
    valid = ", ".join(spec.label for spec in SAMPLERS)
    raise ValueError(f"unknown sampler {name!r}; valid samplers: {valid}")


def find_scheduler(name: str | None) -> SchedulerSpec:
    """A scheduler by label, name or alias; None or "" is Automatic."""
    if not name:
        return AUTOMATIC
    for spec in SCHEDULERS:
        if any(n.lower() == name.lower() for n in _names(spec)):
            return spec
    valid = ", ".join(spec.label for spec in SCHEDULERS)
    raise ValueError(f"unknown scheduler {name!r}; valid schedulers: {valid}")


def resolve_sampler(name: str, scheduler: str | None = None) -> tuple[SamplerSpec, SchedulerSpec]:
    """Sampler and scheduler from A1111 names, accepting "<sampler> <scheduler label>" legacy names.

    A scheduler equal to the sampler's default collapses to Automatic, as A1111 does.
    """
    found_scheduler = find_scheduler(scheduler)
    sampler_name = name
    # A legacy suffix such as " Karras" names the scheduler (and wins over `scheduler`).
    for spec in SCHEDULERS[1:]:
        suffix = next((n for n in (spec.label, *spec.aliases) if name.endswith(" " + n)), None)
        if suffix is not None and _is_sampler(name[: -len(suffix) - 1]) and not _is_sampler(name):
            sampler_name, found_scheduler = name[: -len(suffix) - 1], spec
            break
    sampler = find_sampler(sampler_name)
    if sampler.default_scheduler == found_scheduler.name:
        found_scheduler = AUTOMATIC
    return sampler, found_scheduler


def _is_sampler(name: str) -> bool:
    try:
        find_sampler(name)
    except ValueError:
        return False
    return True


def effective_schedule_label(sampler: SamplerSpec, scheduler: SchedulerSpec) -> str:
    """The "Schedule type" written to the infotext ("Karras" for DPM++ 2M on Automatic)."""
    if scheduler is AUTOMATIC and sampler.default_scheduler is not None:
        return find_scheduler(sampler.default_scheduler).label
    return scheduler.label


def prompt_schedule_steps(sampler: SamplerSpec, steps: int) -> int:
    """Steps over which prompt editing is scheduled: doubled for second-order samplers."""
    return steps * (2 if sampler.second_order else 1)


@dataclass(frozen=True)
class ScheduleOptions:
    """Settings that shape a schedule (0 means "use the model's / scheduler's default")."""

    sigma_min: float = 0.0
    sigma_max: float = 0.0
    rho: float = 0.0
    beta_alpha: float = 0.6
    beta_beta: float = 0.6
    always_discard_next_to_last_sigma: bool = False
    use_old_karras_scheduler_sigmas: bool = False
    is_sdxl: bool = False
    quantize: bool = True
    flow: FL.FlowSchedule | None = None  # a rectified-flow model's shift at this size


def uses_timestep_grid(sampler: SamplerSpec, scheduler: SchedulerSpec) -> bool:
    return sampler.timestep_grid is not None and scheduler is AUTOMATIC


def compute_sigmas(sampler: SamplerSpec, scheduler: SchedulerSpec, steps: int, model_sigmas: Tensor,
                   options: ScheduleOptions = ScheduleOptions()) -> Tensor:
    """The sigmas for `steps` steps: `model_sigmas` is the model's ascending sigma table
    (for a flow model, `options.flow.table()` is used instead)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    discard = sampler.discard_next_to_last_sigma or options.always_discard_next_to_last_sigma
    n = steps + (1 if discard else 0)
    if options.flow is not None:
        name = (sampler.default_scheduler or "simple") if scheduler is AUTOMATIC else scheduler.name
        sigmas = _schedule(name, n, options.flow.table(), options)
        return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas
    table = lcm_sigmas(model_sigmas) if sampler.lcm else model_sigmas
    # A1111's timestep samplers: their own grid (DDIM's n timesteps make n - 1 steps).
    if uses_timestep_grid(sampler, scheduler):
        grid = S.timesteps if sampler.timestep_grid == "ddim" else S.unipc_time_uniform
        return grid(n, model_sigmas)
    name = sampler.default_scheduler if scheduler is AUTOMATIC else scheduler.name
    sigmas = _schedule(name or "uniform", n, table, options)
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def _schedule(name: str, n: int, table: Tensor, options: ScheduleOptions) -> Tensor:
    spec = find_scheduler(name)
    if options.use_old_karras_scheduler_sigmas and options.flow is None:
        model_min, model_max = 0.1, 10.0
    else:
        model_min, model_max = float(table[0]), float(table[-1])
    lo, hi = options.sigma_min or model_min, options.sigma_max or model_max
    rho = options.rho or spec.default_rho
    build: dict[str, Callable[[], Tensor]] = {
        "uniform": lambda: S.uniform(n, table),
        "karras": lambda: S.karras(n, lo, hi, rho),
        "exponential": lambda: S.exponential(n, lo, hi),
        "polyexponential": lambda: S.polyexponential(n, lo, hi, rho),
        "sgm_uniform": lambda: S.sgm_uniform(n, lo, hi, table, quantize=options.quantize),
        "kl_optimal": lambda: S.kl_optimal(n, lo, hi),
        "align_your_steps": lambda: S.align_your_steps(n, is_sdxl=options.is_sdxl),
        "simple": lambda: S.simple(n, table),
        "normal": lambda: S.normal(n, lo, hi, table, quantize=options.quantize),
        "ddim": lambda: S.ddim(n, table),
        "beta": lambda: S.beta(n, lo, hi, options.beta_alpha, options.beta_beta),
    }
    if options.flow is not None:
        build.update(_flow_builds(n, lo, hi, options.flow))
    return build[spec.name]()


def _flow_builds(n: int, lo: float, hi: float, flow: FL.FlowSchedule
                 ) -> dict[str, Callable[[], Tensor]]:
    """The schedules that differ for a flow model: timestep = N * sigma, through the shift."""
    def no_table() -> Tensor:
        raise ValueError("Align Your Steps has no sigma table for flow models (SD3, Flux)")

    return {
        "normal": lambda: FL.normal(n, lo, hi, flow),
        "sgm_uniform": lambda: FL.normal(n, lo, hi, flow, sgm=True),
        "align_your_steps": no_table,
    }


def initial_noise_scale(sampler: SamplerSpec, scheduler: SchedulerSpec,
                        sigma_first: float, *, flow: bool = False) -> float:
    """Multiply unit noise by this to start txt2img: sigma, or sqrt(sigma^2 + 1) on a timestep
    grid; a flow model (`flow=True`) starts from sigma * noise (sigma_max = 1: the noise)."""
    if flow or not uses_timestep_grid(sampler, scheduler):
        return sigma_first
    return math.sqrt(sigma_first**2 + 1)


def final_latent_scale(sampler: SamplerSpec, scheduler: SchedulerSpec, sigma_last: float,
                       *, flow: bool = False) -> float:
    """Multiply the sampler's result by this: 1/sqrt(sigma^2 + 1) when a timestep grid stops
    early (never for a flow model)."""
    if flow or not uses_timestep_grid(sampler, scheduler):
        return 1.0
    return 1 / math.sqrt(sigma_last**2 + 1)


def img2img_steps(steps: int, denoising_strength: float, fix_steps: bool) -> tuple[int, int]:
    """(schedule steps, t_enc) for img2img / hires (A1111 setup_img2img_steps)."""
    strength = min(denoising_strength, 0.999)
    if fix_steps:
        return (int(steps / strength) if denoising_strength > 0 else 0), steps - 1
    return steps, int(strength * steps)


def img2img_sigmas(sigmas: Tensor, steps: int, denoising_strength: float,
                   fix_steps: bool) -> Tensor:
    """The tail of a schedule img2img runs; `sigmas` must be computed for
    `img2img_steps(...)[0]` steps."""
    total, t_enc = img2img_steps(steps, denoising_strength, fix_steps)
    if len(sigmas) - 1 != total:
        raise ValueError(f"img2img_sigmas: expected a schedule of {total} steps, "
                         f"got {len(sigmas) - 1}")
    if total == 0:
        return sigmas[-1:]
    return sigmas[total - t_enc - 1:]


@dataclass(frozen=True)
class SamplerOptions:
    """Per-request sampler settings; eta None means A1111's default for the sampler's kind."""

    eta: float | None = None
    eta_ancestral: float = 1.0
    eta_ddim: float = 0.0
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    unipc_order: int = 3
    unipc_variant: Literal["bh1", "bh2"] = "bh1"
    unipc_lower_order_final: bool = True


def sampler_kwargs(sampler: SamplerSpec, options: SamplerOptions, *,
                   flow: bool = False) -> dict[str, Any]:
    """The keyword arguments A1111 passes to this sampler function (and `flow=True` for a
    rectified-flow model: the samplers then add their noise on the flow path)."""
    kwargs = dict(sampler.fixed_kwargs)
    if flow:
        kwargs["flow"] = True
    kwargs.update({name: getattr(options, name) for name in sampler.extra_params})
    if sampler.eta_source is not None:
        default = options.eta_ancestral if sampler.eta_source == "ancestral" else options.eta_ddim
        kwargs["eta"] = default if options.eta is None else options.eta
    if sampler.function is sample_unipc:
        kwargs.update(order=options.unipc_order, variant=options.unipc_variant,
                      lower_order_final=options.unipc_lower_order_final)
    return kwargs


def default_noise_sampler(sampler: SamplerSpec, x: Tensor, sigmas: Tensor, *,
                          generators: list[torch.Generator] | None,
                          seeds: list[int]) -> NoiseSampler:
    """Brownian-tree noise seeded per image for SDE samplers, per-image generators otherwise."""
    if sampler.brownian_noise:
        positive = sigmas[sigmas > 0]
        return BrownianTreeNoiseSampler(x, float(positive.min()), float(sigmas.max()), seeds)
    return randn_noise_sampler(x, generators)


def start_sampler(sampler: SamplerSpec, model: Model, x: Tensor, sigmas: Tensor, *,
                  options: SamplerOptions = SamplerOptions(),
                  noise_sampler: NoiseSampler | None = None,
                  flow: bool | None = None) -> SamplerGen:
    """The sampler's generator, with A1111's options applied. `flow` None: the model's
    `is_flow` attribute decides (`FlowDenoiser` and a `CFGDenoiser` over one say True)."""
    flow = bool(getattr(model, "is_flow", False)) if flow is None else flow
    return sampler.function(model, x, sigmas, None, noise_sampler=noise_sampler,
                            **sampler_kwargs(sampler, options, flow=flow))
