"""Tiled Diffusion: a guided denoiser evaluated over overlapping latent tiles.

`TiledDenoiser(inner)` is itself a k-diffusion model D(x, sigma): each call crops the
latent into windows, runs the job's guided denoiser (`cfg.CFGDenoiser`, with all its
hooks) on batches of windows and blends the windows' predictions back into one, so
every sampler works unchanged and the U-Net never sees more than one tile batch.

Blending (docs/tiled_diffusion.md):
- MultiDiffusion (Bar-Tal et al., 2023, arXiv 2302.08113): the least-squares solution of
  the per-tile predictions is their plain average where tiles overlap;
- Mixture of Diffusers (Jiménez, 2023, arXiv 2302.02412): a weighted average with a
  Gaussian weight per tile (centre 1, edges small), so seams fade with less overlap.
- Regions (the extension's "Region Prompt Control"): a "Background" region is one more
  window with its own conds, averaged like a tile; a "Foreground" region then replaces
  the averaged prediction inside its rectangle with feathered weights.

The inner denoiser counts its calls as steps; the wrapper rewinds that counter for every
tile batch, so each step's prompt schedule and hooks see the same step for all tiles.
U-Net inputs filled by hooks (`params.unet_kwargs`) that describe the whole latent (a
ControlNet hint) are narrowed to the tiles by a `for_tiles(views)` method when they have
one (`TileView`: which image and window each row's tile shows), before `for_rows`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from modules.sampling.cfg import InpaintBlend

MULTIDIFFUSION = "MultiDiffusion"
MIXTURE = "Mixture of Diffusers"
METHODS = (MULTIDIFFUSION, MIXTURE)
GAUSSIAN_VARIANCE = 0.01  # of the tile weight over the tile's side as unit (Jiménez, 2023)


@dataclass(frozen=True)
class Window:
    """A rectangle of the latent in latent pixels."""

    top: int
    left: int
    height: int
    width: int

    def of(self, tensor: Tensor) -> Tensor:
        """The window of a (..., H, W) tensor."""
        return tensor[..., self.top:self.top + self.height, self.left:self.left + self.width]


@dataclass(frozen=True)
class TileView:
    """What one row of a tiled U-Net call shows: a window of image `image` of the latent
    of size (full_height, full_width); given to `for_tiles` of `unet_kwargs` values."""

    image: int
    window: Window
    full_height: int
    full_width: int


def _starts(size: int, tile: int, overlap: int, align: int) -> list[int]:
    """Tile origins along one side: evenly spread, first at 0, last at size - tile."""
    if tile >= size:
        return [0]
    stride = max(1, tile - overlap)
    count = math.ceil((size - tile) / stride) + 1
    starts = [(round(k * (size - tile) / (count - 1)) // align) * align for k in range(count)]
    starts[-1] = size - tile
    return sorted(set(starts))


def tile_grid(height: int, width: int, tile_height: int, tile_width: int, overlap: int,
              align: int = 1) -> list[Window]:
    """Overlapping windows of one size covering a (height, width) latent, row by row.

    Tiles larger than the latent are clipped to it; `align` keeps origins on a multiple
    (2 for the flow transformers, which read 2x2 patches)."""
    th, tw = min(tile_height, height), min(tile_width, width)
    overlap = max(0, min(overlap, th - 1, tw - 1))
    return [Window(top, left, th, tw) for top in _starts(height, th, overlap, align)
            for left in _starts(width, tw, overlap, align)]


def tile_weight(window: Window, method: str) -> Tensor:
    """(h, w) blending weight of one window: ones, or the Mixture of Diffusers Gaussian."""
    if method == MULTIDIFFUSION:
        return torch.ones(window.height, window.width)
    if method != MIXTURE:
        raise ValueError(f"Tiled Diffusion: unknown method {method!r} (one of {METHODS})")

    def gauss(n: int) -> Tensor:
        u = (torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5
        return torch.exp(-u * u / (2 * GAUSSIAN_VARIANCE))
    return torch.outer(gauss(window.height), gauss(window.width)).float()


def feather_mask(height: int, width: int, feather: float) -> Tensor:
    """(h, w) weight of a Foreground region: 1 inside, falling linearly to 0 at the edge
    over `feather` x half the shorter side (0: a hard rectangle)."""
    if feather <= 0:
        return torch.ones(height, width)
    ramp = max(1.0, feather * min(height, width) / 2)

    def side(n: int) -> Tensor:
        i = torch.arange(n, dtype=torch.float32)
        return (torch.minimum(i + 1, n - i) / ramp).clamp(max=1.0)
    return torch.outer(side(height), side(width))


@dataclass(frozen=True)
class Region:
    """One prompt rectangle: its window, conds per image and blend mode."""

    window: Window
    conds: list  # MultiCond per image
    unconds: list  # ScheduledCond per image
    foreground: bool = False
    feather: float = 0.0


@dataclass
class _Job:
    """One inner call: windows of one size with the same conds."""

    windows: list[Window]
    conds: list | None  # None: the job's own conds
    unconds: list | None
    weights: list[Tensor]  # (h, w) per window, before normalisation
    foreground: Tensor | None = None  # feathered mask of a Foreground region


@dataclass
class TiledDenoiser:
    """D_tiled(x, sigma) = blend over windows of inner(x[window], sigma)."""

    inner: Any  # CFGDenoiser
    windows: list[Window]
    method: str = MULTIDIFFUSION
    tile_batch_size: int = 4
    regions: list[Region] = field(default_factory=list)
    last_uncond: Tensor | None = None
    _views: list[TileView] = field(default_factory=list, repr=False)
    _norms: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Tiled Diffusion: unknown method {self.method!r}")
        if not self.windows and not self.regions:
            raise ValueError("Tiled Diffusion: nothing to paint (no tiles and no regions)")

    def __getattr__(self, name: str) -> Any:
        # Samplers read `is_flow` and friends from the model: the inner denoiser's.
        if name == "inner" or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    def jobs(self) -> list[_Job]:
        """Tile batches of the grid, then one job per region (background before foreground)."""
        size = max(1, self.tile_batch_size)
        jobs = [_Job(self.windows[k:k + size], None, None,
                     [tile_weight(w, self.method) for w in self.windows[k:k + size]])
                for k in range(0, len(self.windows), size)]
        ordered = sorted(self.regions, key=lambda region: region.foreground)
        for region in ordered:
            w = region.window
            jobs.append(_Job([w], region.conds, region.unconds, [tile_weight(w, self.method)],
                             feather_mask(w.height, w.width, region.feather)
                             if region.foreground else None))
        return jobs

    def _normalised(self, jobs: list[_Job], height: int, width: int) -> list[list[Tensor]]:
        """Each background window's weight over the sum of weights at each latent pixel."""
        key = (height, width)
        if key not in self._norms:
            total = torch.zeros(height, width)
            for job in jobs:
                if job.foreground is None:
                    for w, weight in zip(job.windows, job.weights):
                        w.of(total).add_(weight)
            self._norms[key] = [[weight / w.of(total).clamp(min=1e-12) if job.foreground is None
                                 else weight for w, weight in zip(job.windows, job.weights)]
                                for job in jobs]
        return self._norms[key]

    def __call__(self, x: Tensor, sigma: Tensor, **extra_args: Any) -> Tensor:
        cfg = self.inner
        if cfg.switch is not None and cfg.switch.due(cfg.step, cfg.total_steps, sigma):
            cfg._take_switch()  # the refiner takes over before the first tile reads conds
        batch, _, height, width = x.shape
        jobs = self.jobs()
        weights = self._normalised(jobs, height, width)
        step = cfg.step
        saved = (cfg.conds, cfg.unconds, cfg.image_cond, cfg.inpaint)
        out = torch.zeros_like(x)
        uncond = torch.zeros_like(x) if cfg.record_uncond else None
        cfg.hooks.before_model.append(self._narrow_to_tiles)  # last: after ControlNet's
        try:
            for job, job_weights in zip(jobs, weights):
                denoised, tile_uncond = self._run(job, x, sigma, saved, step, extra_args)
                for k, (w, weight) in enumerate(zip(job.windows, job_weights)):
                    part = denoised[k * batch:(k + 1) * batch]
                    self._paint(out, w, part, weight.to(x), job.foreground)
                    if uncond is not None and tile_uncond is not None:
                        self._paint(uncond, w, tile_uncond[k * batch:(k + 1) * batch],
                                    weight.to(x), job.foreground)
        finally:
            cfg.hooks.before_model.remove(self._narrow_to_tiles)
            cfg.conds, cfg.unconds, cfg.image_cond, cfg.inpaint = saved
            cfg.step = step + 1
        self.last_uncond = uncond
        return out

    @staticmethod
    def _paint(out: Tensor, window: Window, part: Tensor, weight: Tensor,
               foreground: Tensor | None) -> None:
        """Add a background window's weighted prediction, or lay a foreground one over."""
        target = window.of(out)
        if foreground is None:
            target.add_(part * weight)
        else:
            mask = foreground.to(part)
            target.mul_(1 - mask).add_(part * mask)

    def _run(self, job: _Job, x: Tensor, sigma: Tensor, saved: tuple, step: int,
             extra_args: dict) -> tuple[Tensor, Tensor | None]:
        """One inner call over the job's windows (rows tile-major: tile k, image i)."""
        cfg = self.inner
        conds, unconds, image_cond, inpaint = saved
        batch, (_, _, height, width) = x.shape[0], x.shape
        cfg.conds = [c for _ in job.windows for c in (job.conds or conds)]
        cfg.unconds = [u for _ in job.windows for u in (job.unconds or unconds)]
        cfg.image_cond = (None if image_cond is None
                          else torch.cat([w.of(image_cond) for w in job.windows]))
        cfg.inpaint = None if inpaint is None else InpaintBlend(
            init_latent=torch.cat([w.of(_per_image(inpaint.init_latent, batch))
                                   for w in job.windows]),
            mask=torch.cat([w.of(_per_image(inpaint.mask, batch)) for w in job.windows]))
        self._views = [TileView(i, w, height, width) for w in job.windows for i in range(batch)]
        cfg.step = step
        tiles = torch.cat([w.of(x) for w in job.windows])
        denoised = cfg(tiles, sigma.repeat(len(job.windows)), **extra_args)
        return denoised, cfg.last_uncond

    def _narrow_to_tiles(self, params) -> None:
        """CFG `before_model` hook: whole-latent U-Net inputs narrowed to this call's tiles."""
        for name, value in list(params.unet_kwargs.items()):
            if hasattr(value, "for_tiles"):
                params.unet_kwargs[name] = value.for_tiles(list(self._views))


def _per_image(tensor: Tensor, batch: int) -> Tensor:
    """A (1 or batch, ...) tensor as (batch, ...)."""
    return tensor.expand(batch, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def observed(denoiser: Callable[..., Tensor], seen: list) -> Callable[..., Tensor]:
    """`denoiser` that records the shape of every input it gets (tests, benchmarks)."""
    def call(x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        seen.append(tuple(x.shape))
        return denoiser(x, sigma, **kwargs)
    return call
