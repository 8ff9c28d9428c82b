"""Seamless tiling for one job: the plan's U-Net and VAE seen with circular padding.

A1111's `tiling` request field. `apply_tiling(plan)` replaces the plan's model and its
LoRA-patched U-Net call by views from `modules/nn/tiling.py`: copies of the module tree
whose convolutions pad circularly, sharing every weight with the loaded model, which
stays unchanged for the other jobs using it. The views belong to the plan (one job, one
model: no cache outside it), so the hires pass (a copy of the plan), img2img's encode,
inpainting conditioning and the tiled VAE (which then wraps at the picture's border
only, `modules/nn/vae_tiled.py`) all see them.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from modules.errors import ParamsError
from modules.models.patcher import PatchedCall
from modules.nn.tiling import circular_view


def apply_tiling(plan) -> None:
    """Make `plan` (a `Plan`) sample and decode with circular padding; its refiner too."""
    if plan.loaded.family.is_flow:  # SD3 / Flux: no padded convolutions in the transformer
        raise ParamsError("tiling", "Tiling needs a U-Net model (SD1/SD2/SDXL); "
                                    f"{plan.loaded.info.name} is a flow transformer")
    plan.loaded = tiled_model(plan.loaded)
    plan.networks = tiled_networks(plan.networks)
    if plan.refiner is not None:
        plan.refiner = replace(plan.refiner, loaded=tiled_model(plan.refiner.loaded),
                               networks=tiled_networks(plan.refiner.networks))


def tiled_model(loaded):
    """A view of a `LoadedModel` whose VAE pads circularly (patcher, names, hashes shared)."""
    view = copy.copy(loaded)
    view.vae_override = circular_view(loaded.vae)
    return view


def tiled_networks(networks):
    """`ActiveNetworks` whose U-Net call runs a circular view with the same patched weights."""
    call = networks.unet
    if not isinstance(call, PatchedCall):
        raise TypeError(f"tiling: unexpected U-Net callable {type(call).__name__}")
    view = PatchedCall(circular_view(call.module), call.params, call.lock, call.call_kwargs)
    return replace(networks, unet=view)
