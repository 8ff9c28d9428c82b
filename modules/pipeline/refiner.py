"""The refiner: a second checkpoint takes over sampling part-way through (A1111's "Refiner").

The request names a checkpoint (`refiner_checkpoint`) and a fraction (`refiner_switch_at`).
Sampling starts on the job's model; once the completed fraction of the schedule
passes `switch_at`, the guided denoiser swaps its model and its conditioning (encoded
again by the refiner's own text encoders, e.g. an SDXL refiner's OpenCLIP-G with the
aesthetic score) and the *same* sampler run goes on with the latent it has, so
multistep samplers keep their history, as A1111 does.

The completed fraction is measured as A1111 measures it (docs/a1111-semantics.md, "Refiner"):

* by sigma (default): the discrete timestep t nearest the current sigma in the base
  model's table of T sigmas gives `(T - 1 - t) / T`;
* by sampling steps (setting `refiner_switch_by_sample_steps`): the guided denoiser's
  call count over its total, which counts both calls of a second-order step.

With hires fix, the setting `hires_fix_refiner_pass` picks the first pass, the second
pass (default) or both. A refiner equal to the job's model does nothing. The refiner's
latent space must match the model's (channels and VAE downscale); anything else is a
`ParamsError` naming `refiner_checkpoint` before sampling starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from modules.models.errors import ModelLoadError
from modules.pipeline.params import ParamsError, refiner_name

HIRES_PASSES = {"first pass": (True, False), "second pass": (False, True),
                "both passes": (True, True)}


@dataclass
class Refiner:
    """The refiner of one job: its loaded model, its patched networks and when it starts."""

    loaded: object  # modules.models.manager.LoadedModel
    networks: object  # modules.networks.activate.ActiveNetworks
    switch_at: float
    by_steps: bool


@dataclass
class SwitchTarget:
    """What the guided denoiser uses after the switch."""

    denoiser: Callable[..., torch.Tensor]
    conds: list
    unconds: list
    image_cond: torch.Tensor | None


@dataclass
class ModelSwitch:
    """Decides, at each guided call, whether the refiner takes over, and builds it once."""

    switch_at: float
    by_steps: bool
    base_sigmas: torch.Tensor  # the job model's ascending discrete sigma table
    build: Callable[[], SwitchTarget]

    def completed(self, step: int, total_steps: int, sigma: torch.Tensor) -> float:
        """The fraction of sampling done before this call, by steps or by sigma."""
        if self.by_steps:
            return step / max(1, total_steps)
        table = self.base_sigmas.to(sigma.device, torch.float32)
        timestep = int(torch.argmin((table - sigma.max().float()).abs()))
        return (len(table) - 1 - timestep) / len(table)

    def due(self, step: int, total_steps: int, sigma: torch.Tensor) -> bool:
        return self.completed(step, total_steps, sigma) >= self.switch_at


def prepare_refiner(runtime, plan) -> Refiner | None:
    """The job's refiner, loaded and checked; None when none is chosen or it is the job's model."""
    name = refiner_name(plan.params.refiner_checkpoint)
    if name is None:
        return None
    try:
        loaded = runtime.models.get(name)
    except ModelLoadError as error:
        raise ParamsError("refiner_checkpoint", str(error)) from error
    if loaded.info.path == plan.loaded.info.path:
        return None
    base, other = plan.loaded.family, loaded.family
    if (other.latent_channels, other.vae.downscale) != (base.latent_channels, base.vae.downscale):
        raise ParamsError("refiner_checkpoint",
                          f"{loaded.info.name} ({other.label}) works in another "
                          f"latent space than {plan.loaded.info.name} ({base.label})")
    from modules.networks.activate import NetworkRegistry, activate_networks

    registry = runtime.networks or NetworkRegistry.for_paths(runtime.paths,
                                                             runtime.models.hash_cache)
    networks = activate_networks(registry, loaded, plan.prompts, plan.negative_prompts,
                                 comments=plan.settings.enable_prompt_comments)
    plan.warnings += [w for w in networks.warnings if w not in plan.warnings]
    return Refiner(loaded=loaded, networks=networks, switch_at=float(plan.params.refiner_switch_at),
                   by_steps=plan.settings.refiner_switch_by_sample_steps)


def infotext_params(refiner: Refiner, settings, *, hires: bool) -> dict:
    """A1111's keys: `Refiner: stem [hash]`, `Refiner switch at`, and the switch rules when not
    default."""
    info = refiner.loaded.info
    extra = {"Refiner": f"{info.stem} [{refiner.loaded.shorthash}]" if refiner.loaded.shorthash
             else info.stem, "Refiner switch at": refiner.switch_at}
    if refiner.by_steps:
        extra["Refiner switch by sampling steps"] = True
    if hires and settings.hires_fix_refiner_pass != "second pass":
        extra["Hires refiner"] = settings.hires_fix_refiner_pass
    return extra


def split_for_hires(refiner: Refiner | None, settings) -> tuple[Refiner | None, Refiner | None]:
    """(first-pass refiner, second-pass refiner) under `hires_fix_refiner_pass`."""
    first, second = HIRES_PASSES[settings.hires_fix_refiner_pass]
    return (refiner if first else None), (refiner if second else None)


def refiner_plan(plan, refiner: Refiner):
    """The plan as the refiner sees it: its model and networks, everything else the same."""
    return replace(plan, loaded=refiner.loaded, networks=refiner.networks, refiner=None)
