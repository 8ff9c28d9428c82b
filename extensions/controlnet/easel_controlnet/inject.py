"""Per-step ControlNet injection through the U-Net's documented `control=` hook.

Zhang et al. (2023), "Adding Conditional Control to Text-to-Image Diffusion Models":
each unit's ControlNet runs on the U-Net's own input (x_t, t, text, SDXL's ADM vector)
plus its hint; its residuals, scaled per level, are summed over units and added to the
U-Net's skip connections and middle block (`modules.nn.unet.ControlResiduals`).

T2I-Adapter and IP-Adapter units ride on the same hook as U-Net patches
(`easel_controlnet/adapters.py`).

Nothing is patched: `ControlStepHook` is a CFG `before_model` hook of one sampler call
(added from the script's `process_before_every_sampling`). At each step it keeps the
units whose [guidance_start, guidance_end] holds the sampling progress step / total
(inclusive, as the ControlNet extension checks) and puts a `ControlProvider` in
`params.unet_kwargs["control"]`; CFGDenoiser narrows it to the rows of each U-Net call
(`for_rows`), and the U-Net calls it with its inputs.

Control modes (docs/model-formats.md, "ControlNet files"):
- Balanced: every residual x weight, on every row.
- My prompt is more important ("soft injection"): residual i x weight x 0.825^(12 - i),
  i = 0..12 for SD1/SD2's 13 outputs (SDXL's 10 take the first 10 of those scales),
  so the deep, coarse levels keep most of their effect and the fine ones fade.
- ControlNet is more important: soft injection, and the residuals are applied to the
  conditional rows only ("cfg injection"): the negative prompt's prediction gets no
  control, so CFG pushes towards the control.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from modules.nn.controlnet import ControlNet
from modules.nn.unet import ControlResiduals

SOFT_INJECTION_BASE = 0.825
SOFT_INJECTION_TOP = 12  # SD1's 13 outputs are numbered 0..12


def unit_active(step: int, total_steps: int, start: float, end: float) -> bool:
    """Whether a unit with guidance [start, end] contributes at this step."""
    progress = step / total_steps if total_steps > 0 else 0.0
    return start <= progress <= end


def level_scales(count: int, weight: float, control_mode: str) -> list[float]:
    """Per-residual scales (encoder blocks first, middle last) for a control mode."""
    if control_mode == "Balanced":
        return [weight] * count
    return [weight * SOFT_INJECTION_BASE ** float(SOFT_INJECTION_TOP - i) for i in range(count)]


@dataclass
class ActiveUnit:
    """One enabled unit for one sampler call: its ControlNet, hint and schedule."""

    model: ControlNet
    hint: torch.Tensor  # (1 or batch, C, H, W) in [0, 1] (-1: inpaint), on the model's device
    weight: float
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    _sized: dict = field(default_factory=dict, repr=False)  # hint per latent size

    @property
    def cond_only(self) -> bool:
        return self.control_mode == "ControlNet is more important"

    def hint_for(self, height: int, width: int) -> torch.Tensor:
        """The hint at the pixel size of an (height, width) latent (hires pass: larger)."""
        scale = self.model.config.downscale
        size = (height * scale, width * scale)
        if size not in self._sized:
            hint = self.hint
            if tuple(hint.shape[-2:]) != size:
                hint = F.interpolate(hint, size=size, mode="bilinear", align_corners=False)
            self._sized[size] = hint
        return self._sized[size]

    def cropped(self, views) -> "ActiveUnit":
        """This unit over tiles (Tiled Diffusion's `TileView`s, one per tiled image): the
        hint at the whole latent's pixel size, cropped to each tile's window."""
        scale = self.model.config.downscale
        crops = []
        for view in views:
            full = self.hint_for(view.full_height, view.full_width)
            w = view.window
            crops.append(full[min(view.image, full.shape[0] - 1), :,
                              w.top * scale:(w.top + w.height) * scale,
                              w.left * scale:(w.left + w.width) * scale])
        return replace(self, hint=torch.stack(crops), _sized={})

    def residuals(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                  y: torch.Tensor | None, rows_image: list[int],
                  cancel=None) -> ControlResiduals:
        """This unit's scaled residuals for a batch of rows (row -> image index)."""
        hint = self.hint_for(*x.shape[-2:])
        if hint.shape[0] == 1:
            hint = hint.expand(x.shape[0], -1, -1, -1)
        else:
            hint = hint[torch.tensor(rows_image, device=hint.device)]
        out = self.model(x[:, : self.model.in_channels], hint.to(x.device), timesteps,
                         context, y, cancel=cancel)
        scales = level_scales(len(out.down) + 1, self.weight, self.control_mode)
        return ControlResiduals(down=tuple(r * s for r, s in zip(out.down, scales)),
                                middle=out.middle * scales[-1])


@dataclass
class ControlProvider:
    """A `modules.nn.unet.ControlSource` over some rows of one CFG step."""

    units: list[ActiveUnit]
    row_images: list[int]
    row_is_uncond: list[bool]

    def for_rows(self, rows: list[int]) -> "ControlProvider":
        return ControlProvider(self.units, [self.row_images[r] for r in rows],
                               [self.row_is_uncond[r] for r in rows])

    def for_tiles(self, views) -> "ControlProvider":
        """The provider of a tiled step (`modules.sampling.tiled_diffusion`): the step's
        images are tiles, so each unit's hint becomes the crops of those tiles."""
        return ControlProvider([unit.cropped(views) for unit in self.units],
                               self.row_images, self.row_is_uncond)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None, *, cancel=None) -> ControlResiduals | None:
        """:param cancel: the U-Net call's cancellation, checked between ControlNet blocks"""
        if len(self.row_is_uncond) != x.shape[0]:
            raise ValueError(f"ControlNet: {x.shape[0]} rows in the U-Net call but "
                             f"{len(self.row_is_uncond)} described")
        total: ControlResiduals | None = None
        cond = torch.tensor([not u for u in self.row_is_uncond], device=x.device,
                            dtype=x.dtype).view(-1, 1, 1, 1)
        for unit in self.units:
            if unit.cond_only and not bool(cond.any()):
                continue  # only negative-prompt rows: this unit adds nothing
            part = unit.residuals(x, timesteps, context, y, self.row_images, cancel)
            if unit.cond_only:
                part = ControlResiduals(down=tuple(r * cond for r in part.down),
                                        middle=part.middle * cond)
            total = part if total is None else ControlResiduals(
                down=tuple(a + b for a, b in zip(total.down, part.down)),
                middle=total.middle + part.middle)
        return total


@dataclass
class ControlStepHook:
    """CFG `before_model` hook: the units active at this step, as the U-Net's `control`,
    and the adapter units' patches and context tokens (`easel_controlnet/adapters.py`)."""

    units: list[ActiveUnit]
    adapters: list = field(default_factory=list)  # adapters.AdapterUnit, in unit order

    def __call__(self, params) -> None:
        for adapter in self.adapters:
            if unit_active(params.step, params.total_steps, adapter.guidance_start,
                           adapter.guidance_end):
                adapter.apply(params)
        active = [u for u in self.units
                  if unit_active(params.step, params.total_steps, u.guidance_start,
                                 u.guidance_end)]
        if active:
            params.unet_kwargs["control"] = ControlProvider(
                active, list(params.row_images), list(params.row_is_uncond))
