"""Classifier-free guidance over per-image, per-step conditioning.

Ho & Salimans (2022), "Classifier-Free Diffusion Guidance", extended to composable
prompts (Liu et al., 2022, "Compositional Visual Generation with Composable Diffusion
Models"): for each image, with one unconditional and K weighted conditional predictions,

    D = D_uncond + sum_k w_k * cfg * (D_k - D_uncond).

`CFGDenoiser` is itself a model D(x, sigma) for the samplers. Each call is one sampling
"step" in A1111's sense (docs/a1111-semantics.md, "CFG and step counting"): it counts its calls from
0 and picks every prompt's cond for that count, so second-order samplers, which call it twice per
step, walk a prompt schedule built over twice the steps (`registry.prompt_schedule_steps`).
Rows with equal cond shapes go through the U-Net in one batch. Extensions observe or
change a step through typed hooks passed in at construction: `before_model`
(`CFGDenoiserParams`), `after_model` (`CFGDenoisedParams`) and `after_cfg`
(`AfterCFGParams`), in A1111's order (cfg_denoiser, cfg_denoised, cfg_after_cfg), and
`guidance` (`guidance.GuidanceParams`) between the combination and `after_cfg`: the
guidance tools (SAG, PAG, CFG rescale, dynamic thresholding) change D there and may run
the model again (`modules/sampling/guidance.py`).

Extra U-Net inputs: a `before_model` hook may put keyword arguments for the U-Net in
`params.unet_kwargs` (e.g. ControlNet's `control=`, see `modules.nn.unet`); they go
through the `Denoiser` to every U-Net call of that step. Because rows are grouped into
several calls, a value with a `for_rows(rows: list[int])` method is first narrowed to
the rows of each call (indices into the step's rows, described by `row_images` and
`row_is_uncond`); other values are passed as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.nn.unet_patches import UNetPatches
from modules.sampling.guidance import GuidanceParams, narrowed_params, rows_per_image


@dataclass
class CFGDenoiserParams:
    """One guided step's model input; `before_model` hooks may replace any field."""

    x: Tensor  # (rows, C, H, W): the latent of each row's image
    sigma: Tensor  # (rows,)
    conds: list[Cond]  # one per row: every image's positive parts, then every image's uncond
    image_cond: Tensor | None  # (rows, ...) extra input channels, or None
    step: int
    total_steps: int
    row_images: list[int] = field(default_factory=list)  # the image each row belongs to
    row_is_uncond: list[bool] = field(default_factory=list)  # True for negative-prompt rows
    unet_kwargs: dict[str, Any] = field(default_factory=dict)  # extra U-Net inputs (see above)


@dataclass
class CFGDenoisedParams:
    """The model's per-row predictions, before guidance is combined."""

    x_out: Tensor
    step: int
    total_steps: int


@dataclass
class AfterCFGParams:
    """The guided prediction of one step; `after_cfg` hooks may replace `denoised`."""

    denoised: Tensor
    step: int
    total_steps: int


@dataclass(frozen=True)
class InpaintBlend:
    """Keep the original latent where `mask` is 1:
    denoised = denoised * (1 - mask) + init * mask.

    `blend(init, denoised, mask, sigma)`, when set, replaces that rule (soft inpainting)."""

    init_latent: Tensor
    mask: Tensor
    blend: Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor] | None = None


@dataclass(frozen=True)
class _Row:
    image: int
    cond: Cond
    weight: float  # 0 for the uncond row
    is_uncond: bool


@dataclass
class Hooks:
    """Per-step hooks; lists, so that a job's scripts may append their own."""

    before_model: list[Callable[[CFGDenoiserParams], None]] = field(default_factory=list)
    after_model: list[Callable[[CFGDenoisedParams], None]] = field(default_factory=list)
    after_cfg: list[Callable[[AfterCFGParams], None]] = field(default_factory=list)
    guidance: list[Callable[[GuidanceParams], None]] = field(default_factory=list)


@dataclass
class CFGDenoiser:
    """D(x, sigma) with classifier-free guidance for a batch of images.

    `denoiser(x, sigma, context=..., y=..., c_concat=...)` is the unguided model
    (`denoiser.Denoiser`); `conds[i]` and `unconds[i]` belong to image i.
    """

    denoiser: Callable[..., Tensor]
    conds: list[MultiCond]
    unconds: list[ScheduledCond]
    cfg_scale: float
    total_steps: int
    image_cond: Tensor | None = None
    inpaint: InpaintBlend | None = None
    s_min_uncond: float = 0.0
    s_min_uncond_all: bool = False
    skip_early_cond: float = 0.0
    batch_cond_uncond: bool = True
    cfg_scale_multiplier: float = 1.0
    record_uncond: bool = False
    # Skip the negative rows when the guidance cancels them (scale 1, one part of weight 1):
    # set for SD3 / Flux.1, whose distilled or CFG-free use runs at scale 1.
    skip_uncond_at_scale_one: bool = False
    hooks: Hooks = field(default_factory=Hooks)
    step: int = 0
    last_uncond: Tensor | None = None
    used_skip_early_cfg: bool = False
    used_ngms: bool = False
    # The refiner (modules/pipeline/refiner.py): swaps the model and conds once it is due.
    switch: Any = None

    @property
    def is_flow(self) -> bool:
        """True over a rectified-flow denoiser (`flow.FlowDenoiser`): see `renoise.py`."""
        return bool(getattr(self.denoiser, "is_flow", False))

    def __post_init__(self) -> None:
        if len(self.conds) != len(self.unconds):
            raise ValueError(f"CFGDenoiser: {len(self.conds)} positive and "
                             f"{len(self.unconds)} negative conds")

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:
        if x.shape[0] != len(self.conds):
            raise ValueError(f"CFGDenoiser: batch of {x.shape[0]} "
                             f"but conds for {len(self.conds)} images")
        if self.switch is not None and self.switch.due(self.step, self.total_steps, sigma):
            self._take_switch()
        skip_uncond = self._skip_uncond(sigma)
        rows = self._rows(skip_uncond)
        params = self._model_input(x, sigma, rows)
        for hook in self.hooks.before_model:
            hook(params)
        x_out = self._run_model(params, rows)
        for hook in self.hooks.after_model:
            hook(CFGDenoisedParams(x_out, self.step, self.total_steps))
        denoised = self._combine(x_out, rows, len(self.conds))
        if self.hooks.guidance:
            denoised = self._guide(x, sigma, params, rows, x_out, denoised)
        # Inpainting: keep the known region of the original latent.
        if self.inpaint is not None:
            mask = self.inpaint.mask.to(denoised)
            if self.inpaint.blend is not None:
                denoised = self.inpaint.blend(self.inpaint.init_latent.to(denoised), denoised,
                                              mask, sigma)
            else:
                denoised = denoised * (1 - mask) + self.inpaint.init_latent.to(denoised) * mask
        after = AfterCFGParams(denoised, self.step, self.total_steps)
        for hook in self.hooks.after_cfg:
            hook(after)
        self.step += 1
        return after.denoised

    def _take_switch(self) -> None:
        """Go on with the refiner's model and conds; the sampler keeps its own state."""
        target, self.switch = self.switch.build(), None
        self.denoiser, self.conds, self.unconds = target.denoiser, target.conds, target.unconds
        self.image_cond = target.image_cond

    def _skip_uncond(self, sigma: Tensor) -> bool:
        """Skip Early CFG (first fraction of steps) or NGMS (low sigma, every other step)."""
        if self.skip_uncond_at_scale_one and self._uncond_cancels():
            return True
        if self.skip_early_cond > 0 and self.step / self.total_steps <= self.skip_early_cond:
            self.used_skip_early_cfg = True
            return True
        if (self.s_min_uncond > 0 and (self.step % 2 or self.s_min_uncond_all)
                and float(sigma[0]) < self.s_min_uncond):
            self.used_ngms = True
            return True
        return False

    def _uncond_cancels(self) -> bool:
        """uncond + 1 * (cond - uncond) = cond: scale 1 and each image one part of weight 1."""
        return (self.cfg_scale * self.cfg_scale_multiplier == 1 and not self.record_uncond
                and all(len(multi.parts) == 1 and multi.parts[0][1] == 1
                        for multi in self.conds))

    def _rows(self, skip_uncond: bool) -> list[_Row]:
        """Every image's positive parts at this step, then (unless skipped) every uncond."""
        rows = [_Row(i, scheduled.at(self.step), weight, False)
                for i, multi in enumerate(self.conds) for scheduled, weight in multi.parts]
        if not skip_uncond:
            rows += [_Row(i, uncond.at(self.step), 0.0, True)
                     for i, uncond in enumerate(self.unconds)]
        return rows

    def _model_input(self, x: Tensor, sigma: Tensor, rows: list[_Row]) -> CFGDenoiserParams:
        index = torch.tensor([row.image for row in rows], device=x.device)
        image_cond = (None if self.image_cond is None
                      else self.image_cond[index.to(self.image_cond.device)])
        return CFGDenoiserParams(x[index], sigma[index], [row.cond for row in rows], image_cond,
                                 self.step, self.total_steps, [row.image for row in rows],
                                 [row.is_uncond for row in rows])

    def _run_model(self, params: CFGDenoiserParams, rows: list[_Row]) -> Tensor:
        """One U-Net call per group of rows whose conds have the same shapes."""
        groups: dict[tuple, list[int]] = {}
        for k, (cond, row) in enumerate(zip(params.conds, rows)):
            key = (tuple(cond.crossattn.shape),
                   None if cond.vector is None else tuple(cond.vector.shape),
                   row.is_uncond and not self.batch_cond_uncond)
            groups.setdefault(key, []).append(k)
        x_out = torch.empty_like(params.x)
        for members in groups.values():
            index = torch.tensor(members, device=params.x.device)
            conds = [params.conds[k] for k in members]
            context = torch.stack([c.crossattn for c in conds]).to(params.x.device)
            y = (None if conds[0].vector is None
                 else torch.stack([c.vector for c in conds]).to(params.x.device))
            c_concat = (None if params.image_cond is None
                        else params.image_cond[index.to(params.image_cond.device)])
            extra = {name: value.for_rows(members) if hasattr(value, "for_rows") else value
                     for name, value in params.unet_kwargs.items()}
            x_out[index] = self.denoiser(params.x[index], params.sigma[index], context=context, y=y,
                                         c_concat=c_concat, **extra).to(x_out.dtype)
        return x_out

    def _guide(self, x: Tensor, sigma: Tensor, params: CFGDenoiserParams, rows: list[_Row],
               x_out: Tensor, denoised: Tensor) -> Tensor:
        """Run the guidance hooks (`modules/sampling/guidance.py`) on the combined D."""
        batch = len(self.conds)
        has_uncond = any(row.is_uncond for row in rows)
        uncond = x_out[rows_per_image(params.row_images, params.row_is_uncond, batch, True)] \
            if has_uncond else None
        scale = self.cfg_scale * self.cfg_scale_multiplier
        # D = U + scale * (cond - U), so cond = U + (D - U) / scale (U: uncond or stand-in).
        base = uncond if uncond is not None else x_out[
            rows_per_image(params.row_images, params.row_is_uncond, batch, False)]
        cond = base + (denoised - base) / scale if scale != 0 else base

        def rerun(patches: UNetPatches, *, x: Tensor | None = None,
                  uncond: bool = False) -> Tensor:
            chosen = rows_per_image(params.row_images, params.row_is_uncond, batch, uncond)
            sub = narrowed_params(params, chosen, patches, x)
            return self._run_model(sub, [rows[k] for k in chosen])

        guide = GuidanceParams(x=x, sigma=sigma, denoised=denoised, cond=cond, uncond=uncond,
                               cfg_scale=scale, step=self.step, total_steps=self.total_steps,
                               rerun=rerun, row_images=list(params.row_images),
                               row_is_uncond=list(params.row_is_uncond))
        for hook in self.hooks.guidance:
            hook(guide)
        return guide.denoised

    def _combine(self, x_out: Tensor, rows: list[_Row], batch: int) -> Tensor:
        """uncond + sum_k w_k * scale * (cond_k - uncond), per image."""
        scale = self.cfg_scale * self.cfg_scale_multiplier
        uncond_of = {row.image: k for k, row in enumerate(rows) if row.is_uncond}
        # Without an uncond row, the image's first positive part stands in for it.
        for k, row in enumerate(rows):
            uncond_of.setdefault(row.image, k)
        uncond = x_out[[uncond_of[i] for i in range(batch)]]
        denoised = uncond.clone()
        for k, row in enumerate(rows):
            if not row.is_uncond:
                denoised[row.image] += (x_out[k] - uncond[row.image]) * (row.weight * scale)
        if self.record_uncond:
            self.last_uncond = uncond
        return denoised
