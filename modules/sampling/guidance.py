"""Guidance terms after classifier-free guidance: what SAG, PAG, CFG rescale and
dynamic thresholding see and may change.

`CFGDenoiser` combines its rows into the guided prediction D (`cfg.py`); then each of
its `Hooks.guidance` hooks gets a `GuidanceParams` and may replace `denoised`. Hooks run
in the order they were added (the built-in scripts add the ones that replace the
combination itself, CFG rescale and dynamic thresholding, before the ones that add a
term, SAG and PAG). Everything is in the denoiser's D space (x0 estimates), in which
every k-diffusion sampler works; for a term written in eps space, eps = (x - D) / sigma
for any input x at noise level sigma.

`cond` is the positive prediction the guidance started from,
uncond + sum_k w_k (D_k - uncond), which is D_1 for a prompt of one part with weight 1,
so D = uncond + scale * (cond - uncond). `uncond` is None on a step whose negative rows
were skipped (NGMS, Skip Early CFG, scale 1 on flow models).

`rerun(patches, x=..., uncond=...)` runs the model once more for every image: on its
first positive part (or its negative prompt), at the step's sigma, on `x` (default the
step's latents), with this step's other U-Net inputs (ControlNet, the call's patches
minus those that record the main pass) plus `patches`. PAG's perturbed pass and SAG's
degraded pass are such calls.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from torch import Tensor

from modules.nn.unet_patches import UNetPatch, UNetPatches


@dataclass
class GuidanceParams:
    """One step's guided prediction and what it was made from (module docstring)."""

    x: Tensor  # (B, C, H, W): the sampler's latents at this step
    sigma: Tensor  # (B,)
    denoised: Tensor  # the guided prediction so far; hooks may replace it
    cond: Tensor  # the positive prediction (module docstring)
    uncond: Tensor | None  # the negative prompt's prediction, None when skipped
    cfg_scale: float
    step: int
    total_steps: int
    rerun: Callable[..., Tensor]  # (patches: UNetPatches, *, x=None, uncond=False) -> (B, ...)
    # Per row of the step's main pass: which image it is, and whether it is an uncond row.
    row_images: list[int]
    row_is_uncond: list[bool]


def extra_pass_kwargs(unet_kwargs: dict[str, Any], rows: list[int],
                      patches: UNetPatches) -> dict[str, Any]:
    """The step's U-Net inputs narrowed to `rows`, with `patches` after the step's own
    (those that only record the main pass, `UNetPatch.records`, left out)."""
    narrowed = {name: value.for_rows(rows) if hasattr(value, "for_rows") else value
                for name, value in unet_kwargs.items()}
    own = narrowed.get("patches") or UNetPatches()
    kept = tuple(p for p in own.patches if not getattr(p, "records", False))
    narrowed["patches"] = UNetPatches(kept).plus(*patches.patches)
    return narrowed


def rows_per_image(row_images: list[int], row_is_uncond: list[bool], batch: int,
                   uncond: bool) -> list[int]:
    """One row per image: its first positive part, or its uncond row."""
    chosen: dict[int, int] = {}
    for k, (image, is_uncond) in enumerate(zip(row_images, row_is_uncond)):
        if is_uncond == uncond:
            chosen.setdefault(image, k)
    missing = [i for i in range(batch) if i not in chosen]
    if missing:
        kind = "negative" if uncond else "positive"
        raise ValueError(f"guidance: this step has no {kind} row for image {missing[0]}")
    return [chosen[i] for i in range(batch)]


def narrowed_params(params, rows: list[int], patches: UNetPatches, x: Tensor | None):
    """`CFGDenoiserParams` for an extra pass over some rows (one per image, in order)."""
    sub_x = params.x[rows] if x is None else x
    return replace(
        params, x=sub_x, sigma=params.sigma[rows], conds=[params.conds[k] for k in rows],
        image_cond=None if params.image_cond is None else params.image_cond[rows],
        row_images=[params.row_images[k] for k in rows],
        row_is_uncond=[params.row_is_uncond[k] for k in rows],
        unet_kwargs=extra_pass_kwargs(params.unet_kwargs, rows, patches))


def with_patches(*patches: UNetPatch) -> UNetPatches:
    """Patches for `GuidanceParams.rerun`."""
    return UNetPatches(tuple(patches))
