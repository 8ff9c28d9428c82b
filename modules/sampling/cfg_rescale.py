"""CFG rescale phi: pull the guided prediction's spread back to the positive one's.

Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed"
(arXiv 2305.08891), eq. 15-16, as diffusers' `rescale_noise_cfg` / the `guidance_rescale`
argument of its Stable Diffusion pipelines: in the noise (eps) space, with eps_cfg the
classifier-free guided prediction and eps_pos the positive one,

    eps_rescaled = eps_cfg * std(eps_pos) / std(eps_cfg)      (std per image, all dims)
    eps          = phi * eps_rescaled + (1 - phi) * eps_cfg.

Easel's CFG step works in D space (x0 estimates), where eps = (x - D) / sigma. Both
predictions share x and sigma, so the std ratio is std(x - D_pos) / std(x - D_cfg) and
the rescaled D is x - (x - D_cfg) * (phi * ratio + 1 - phi): the same numbers as
diffusers' eps-space formula without dividing by sigma (no trouble at small sigma).
"""

from __future__ import annotations

import torch
from torch import Tensor

from modules.sampling.guidance import GuidanceParams


def rescale_factor(eps_cfg: Tensor, eps_pos: Tensor, phi: float) -> Tensor:
    """phi * std(eps_pos) / std(eps_cfg) + 1 - phi per image, shaped to broadcast.

    `std` is torch's default (Bessel-corrected), as diffusers' `rescale_noise_cfg`.
    """
    dims = list(range(1, eps_cfg.ndim))
    ratio = eps_pos.std(dim=dims, keepdim=True) / eps_cfg.std(dim=dims, keepdim=True)
    return phi * ratio + (1.0 - phi)


def rescaled_denoised(x: Tensor, denoised: Tensor, cond: Tensor, phi: float) -> Tensor:
    """The guided D with its eps rescaled toward the positive eps's spread (module docstring)."""
    eps_cfg = x - denoised  # eps * sigma: the std ratio is the same without the 1 / sigma
    eps_pos = x - cond
    factor = rescale_factor(eps_cfg.float(), eps_pos.float(), phi).to(eps_cfg.dtype)
    return x - eps_cfg * factor


class CFGRescaleHook:
    """A `Hooks.guidance` hook applying CFG rescale with a fixed phi at every step."""

    def __init__(self, phi: float) -> None:
        self.phi = float(phi)

    def __call__(self, params: GuidanceParams) -> None:
        if params.uncond is None:  # no negative rows this step: D is the positive prediction
            return
        with torch.no_grad():
            params.denoised = rescaled_denoised(params.x, params.denoised, params.cond, self.phi)
