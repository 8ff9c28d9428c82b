"""Adapter units for one sampler call: T2I-Adapter, its style variant, and IP-Adapter.

Unlike a ControlNet (`inject.ActiveUnit`, which runs at every U-Net call), an adapter's
per-step work is a `UNetPatch` added to `params.unet_kwargs["patches"]` (or, for the
style adapter, extra context tokens), by `inject.ControlStepHook` at the steps inside
the unit's [guidance_start, guidance_end]:

- T2I-Adapter (Mou et al., 2023, "T2I-Adapter: Learning Adapters to Dig out More
  Controllable Ability for Text-to-Image Diffusion Models"): the adapter turns the hint
  into one feature map per U-Net level, added to the encoder's outputs
  (`T2IAdapterPatch`). The features do not depend on x_t or t, so they are computed
  once per sampler call and latent size, as the ControlNet extension caches them.
  Control modes as the extension applies them to adapters: Balanced scales every level
  by the weight; the other two use its soft-injection scales weight x (0.25, 0.62,
  0.825, 1.0) from the finest level to the coarsest, and "ControlNet is more important"
  adds the features to the positive-prompt rows only (`CondRowsOnly`).
- Style T2I-Adapter: CLIP image tokens -> 8 extra context tokens, appended to every
  row's text context; the positive rows get them x weight, the negative rows zeros (the
  extension's "cond mark"), so all rows keep one shape and batch together.
- IP-Adapter (Ye et al., 2023, "IP-Adapter: Text Compatible Image Prompt Adapter"):
  the reference's image tokens, computed once, are attended to beside the text by every
  cross-attention layer (`IPAdapterPatch`, decoupled cross-attention); the extension
  gives IP-Adapter units no control mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from modules.nn.configs import UNetConfig
from modules.nn.ip_adapter import IPAdapter, IPAdapterPatch
from modules.nn.t2i_adapter import T2IAdapter, T2IAdapterPatch
from modules.nn.unet_patches import BlockPlace, UNetPatch, with_patch

T2I_SOFT_SCALES = (0.25, 0.62, 0.825, 1.0)  # finest level first, as the extension scales
VAE_SCALE = 8  # latent -> pixel size


def t2i_level_scales(count: int, weight: float, control_mode: str) -> list[float]:
    """Per-feature scales (finest level first) for a control mode."""
    if control_mode == "Balanced":
        return [weight] * count
    soft = T2I_SOFT_SCALES + (1.0,) * max(0, count - len(T2I_SOFT_SCALES))
    return [weight * s for s in soft[:count]]


def _add_patch(params, patch: UNetPatch) -> None:
    params.unet_kwargs["patches"] = with_patch(params.unet_kwargs.get("patches"), patch)


@dataclass(frozen=True)
class CondRowsOnly(UNetPatch):
    """A patch's encoder-feature change on the positive-prompt rows only ("ControlNet
    is more important"): the negative rows keep the U-Net's own features."""

    inner: UNetPatch
    row_is_uncond: tuple[bool, ...]

    def for_rows(self, rows: list[int]) -> CondRowsOnly:
        return CondRowsOnly(self.inner.for_rows(rows),
                            tuple(self.row_is_uncond[r] for r in rows))

    def for_tiles(self, views: list) -> CondRowsOnly:
        return CondRowsOnly(self.inner.for_tiles(views), self.row_is_uncond)

    def after_input_block(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        changed = self.inner.after_input_block(h, place)
        if changed is h:
            return h
        return self._cond_rows(changed, h)

    def after_skip(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        changed = self.inner.after_skip(h, place)
        return h if changed is h else self._cond_rows(changed, h)

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor,
                            place: BlockPlace) -> tuple[torch.Tensor, torch.Tensor]:
        new_h, new_skip = self.inner.before_output_block(h, skip, place)
        if new_h is h and new_skip is skip:
            return h, skip
        return self._cond_rows(new_h, h), self._cond_rows(new_skip, skip)

    def _cond_rows(self, changed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
        cond = torch.tensor([not u for u in self.row_is_uncond], device=original.device)
        return torch.where(cond.view(-1, 1, 1, 1), changed, original)


@dataclass
class T2IAdapterUnit:
    """One enabled T2I-Adapter unit: the adapter, its hint, its schedule."""

    model: T2IAdapter
    hint: torch.Tensor  # (1, C, H, W) in [0, 1] at the generation size, on the model's device
    unet: UNetConfig  # the U-Net the features are added to
    weight: float
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str = "Balanced"
    _features: dict = field(default_factory=dict, repr=False)  # per latent size

    def features_for(self, height: int, width: int) -> list[torch.Tensor]:
        """The scaled features for an (height, width) latent; the adapter runs once per size."""
        step = self.model.config.downscale  # the adapter folds step x step pixel patches
        size = (-(-height * VAE_SCALE // step) * step, -(-width * VAE_SCALE // step) * step)
        if size not in self._features:  # (a size off the grid: the patch resizes the maps)
            hint = self.hint
            if tuple(hint.shape[-2:]) != size:
                hint = F.interpolate(hint, size=size, mode="bilinear", align_corners=False)
            with torch.no_grad():
                features = self.model(hint)
            scales = t2i_level_scales(len(features), 1.0, self.control_mode)
            self._features[size] = [f * s for f, s in zip(features, scales)]
        return self._features[size]

    def apply(self, params) -> None:
        features = self.features_for(*params.x.shape[-2:])
        patch: UNetPatch = UnitT2IPatch(features=features, weight=self.weight,
                                        row_images=list(params.row_images), unet=self.unet,
                                        unit=self)
        if self.control_mode == "ControlNet is more important":
            patch = CondRowsOnly(patch, tuple(params.row_is_uncond))
        _add_patch(params, patch)


@dataclass(frozen=True, kw_only=True, eq=False)
class UnitT2IPatch(T2IAdapterPatch):
    """A unit's T2I patch that can follow Tiled Diffusion: each tile gets the crop of the
    whole latent's features at its window (as a ControlNet's hint is cropped), not the
    whole map squeezed into the tile."""

    unit: T2IAdapterUnit

    def for_tiles(self, views: list) -> T2IAdapterPatch:
        full = self.unit.features_for(views[0].full_height, views[0].full_width)
        return T2IAdapterPatch(features=[_tile_crops(f, views) for f in full],
                               weight=self.weight, row_images=self.row_images, unet=self.unet)


def _tile_crops(feature: torch.Tensor, views: list) -> torch.Tensor:
    """(tiles, C, h, w): each view's window of `feature` (a map of the whole latent, one
    row per image or one for all), in the feature's own resolution; a window that does
    not fall on the feature's grid is rounded outwards (the patch resizes it to the
    block's size)."""
    crops = []
    for view in views:
        scale_y = feature.shape[-2] / view.full_height
        scale_x = feature.shape[-1] / view.full_width
        w = view.window
        top, left = math.floor(w.top * scale_y), math.floor(w.left * scale_x)
        bottom = max(top + 1, math.ceil((w.top + w.height) * scale_y))
        right = max(left + 1, math.ceil((w.left + w.width) * scale_x))
        row = feature[min(view.image, feature.shape[0] - 1)]
        crops.append(row[:, top:bottom, left:right])
    if len({tuple(c.shape) for c in crops}) > 1:  # tiles at the edge may differ by a cell
        size = crops[0].shape[-2:]
        crops = [F.interpolate(c[None], size=tuple(size), mode="bilinear",
                               align_corners=False)[0] for c in crops]
    return torch.stack(crops)


@dataclass
class StyleUnit:
    """One enabled style T2I-Adapter unit: its context tokens, computed once."""

    tokens: torch.Tensor  # (n, context_dim), from the adapter over the CLIP image tokens
    weight: float
    guidance_start: float = 0.0
    guidance_end: float = 1.0

    def apply(self, params) -> None:
        conds = []
        for cond, uncond in zip(params.conds, params.row_is_uncond):
            extra = self.tokens.to(cond.crossattn)
            extra = torch.zeros_like(extra) if uncond else extra * self.weight
            conds.append(replace(cond, crossattn=torch.cat([cond.crossattn, extra], dim=0)))
        params.conds = conds


@dataclass
class IPAdapterUnit:
    """One enabled IP-Adapter unit: the adapter and the reference's image tokens."""

    adapter: IPAdapter
    cond_tokens: torch.Tensor
    uncond_tokens: torch.Tensor
    weight: float
    guidance_start: float = 0.0
    guidance_end: float = 1.0

    def apply(self, params) -> None:
        _add_patch(params, IPAdapterPatch(
            adapter=self.adapter, cond_tokens=self.cond_tokens,
            uncond_tokens=self.uncond_tokens, weight=self.weight,
            row_images=list(params.row_images), row_is_uncond=list(params.row_is_uncond)))


AdapterUnit = T2IAdapterUnit | StyleUnit | IPAdapterUnit
