"""Noise sources for stochastic samplers, reproducible per image.

A1111 makes a batch of N images equal N single-image runs by drawing every sampler
noise tensor image by image from that image's own generator (docs/a1111-semantics.md,
"Sampler noise and ENSD"). The same holds here: `randn_noise_sampler` draws
`torch.randn(x.shape[1:], generator=g)` for each per-image generator and stacks them. SDE samplers
use Brownian-tree noise (Kidger et al., 2021, torchsde) so that noise over an interval is consistent
however the interval is cut; `BrownianTreeNoiseSampler` keeps one tree per image, seeded with that
image's seed, as k-diffusion's batched tree does. Trees live on the CPU in float32.
"""

from __future__ import annotations

import math

import torch
import torchsde
from torch import Tensor

from modules.sampling.base import NoiseSampler


def randn_noise_sampler(x: Tensor, generators: list[torch.Generator] | None) -> NoiseSampler:
    """Unit Gaussian noise shaped like `x`, one draw per image from its own generator."""
    if generators is not None and len(generators) != x.shape[0]:
        raise ValueError(f"randn_noise_sampler: {len(generators)} generators "
                         f"for a batch of {x.shape[0]}")

    # One image at a time, on the generator's device, then moved to x.
    def sample(sigma: float, sigma_next: float) -> Tensor:
        if generators is None:
            return torch.randn_like(x)
        draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=torch.float32)
                 for g in generators]
        return torch.stack(draws).to(device=x.device, dtype=x.dtype)

    return sample


class BrownianTreeNoiseSampler:
    """Brownian increments W(sigma_next) - W(sigma), normalised to unit variance."""

    def __init__(self, x: Tensor, sigma_min: float, sigma_max: float, seeds: list[int]) -> None:
        if len(seeds) != x.shape[0]:
            raise ValueError(f"BrownianTreeNoiseSampler: {len(seeds)} seeds "
                             f"for a batch of {x.shape[0]}")
        self._like = x
        # Interval ends rounded to float32 as k-diffusion's sigmas are; queries are clamped to them.
        self._t0 = _f32(min(sigma_min, sigma_max))
        self._t1 = _f32(max(sigma_min, sigma_max))
        w0 = torch.zeros(x.shape[1:], dtype=torch.float32)
        # One tree per image, seeded with that image's seed.
        self._trees = [torchsde.BrownianTree(self._t0, w0, self._t1, entropy=int(seed))
                       for seed in seeds]

    def __call__(self, sigma: float, sigma_next: float) -> Tensor:
        lo = min(max(_f32(min(sigma, sigma_next)), self._t0), self._t1)
        hi = min(max(_f32(max(sigma, sigma_next)), self._t0), self._t1)
        sign = 1.0 if sigma_next >= sigma else -1.0
        w = torch.stack([tree(lo, hi) for tree in self._trees]) * sign
        w = w / math.sqrt(abs(hi - lo))
        return w.to(device=self._like.device, dtype=self._like.dtype)


def _f32(value: float) -> float:
    """A float rounded to float32 precision."""
    return float(torch.tensor(value, dtype=torch.float32))
