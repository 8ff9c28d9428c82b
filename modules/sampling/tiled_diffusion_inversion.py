"""Noise inversion for img2img upscaling (Tiled Diffusion's "Noise Inversion").

Instead of adding fresh random noise to the input latent, img2img can start from the
noise that the model itself would have turned into the input: run the Euler sampler
backwards, from a small sigma up to the first sigma of the img2img schedule,

    x_{k+1} = x_k + (x_k - D(x_k, s_k)) / s_k * (s_{k+1} - s_k),   x_0 = input latent,

which for a k-diffusion model (x = x0 + s n) and a rectified flow (x = (1 - s) x0 + s n)
alike follows the model's probability-flow ODE in reverse (the same step as Euler
forward, with the sign of ds flipped). Sampling from the result goes back close to the
input, so the upscaled image keeps its content while the tiles add detail.

The extension's options:
- `steps`: inversion steps (the sigma grid is geometric between the two ends);
- `retouch` r >= 1: the model is asked for its prediction at noise level s / r (the
  extension divides the timestep by r): it sees a cleaner image than it gets and sharpens;
- `renoise_strength` and `renoise_kernel`: flat parts of the input (little detail within
  a kernel of that many image pixels) invert to weak noise and would stay flat; there a
  share of fresh noise, `strength` x flatness, is mixed into the inverted noise (with the
  variance kept), so the sampler may add detail there too. Strength 0: pure inversion.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def inversion_sigmas(sigma_min: float, sigma_start: float, steps: int) -> Tensor:
    """steps + 1 noise levels rising geometrically from sigma_min to sigma_start."""
    low, high = torch.tensor(float(sigma_min)).log(), torch.tensor(float(sigma_start)).log()
    return torch.exp(torch.linspace(float(low), float(high), max(1, steps) + 1))


def invert(model: Callable[..., Tensor], x0: Tensor, sigmas: Tensor, *,
           retouch: float = 1.0) -> Tensor:
    """Euler inversion of `x0` along rising `sigmas`; returns x at sigmas[-1]."""
    x = x0.clone()
    for k in range(len(sigmas) - 1):
        s, s_next = float(sigmas[k]), float(sigmas[k + 1])
        sigma_in = torch.full((x.shape[0],), s / max(1.0, retouch), device=x.device)
        denoised = model(x, sigma_in)
        x = x + (x - denoised) / s * (s_next - s)
    return x


def flatness(x0: Tensor, kernel: int) -> Tensor:
    """(batch, 1, H, W) in [0, 1]: 1 where `x0` has no detail within `kernel` latent px."""
    size = max(1, int(kernel)) | 1  # odd, so the pooled map keeps the latent's size
    pad = size // 2
    mean = F.avg_pool2d(F.pad(x0, (pad,) * 4, mode="replicate"), size, stride=1)
    detail = F.avg_pool2d(F.pad((x0 - mean).abs(), (pad,) * 4, mode="replicate"), size,
                          stride=1).mean(dim=1, keepdim=True)
    peak = detail.flatten(1).amax(dim=1).clamp(min=1e-8).view(-1, 1, 1, 1)
    return 1 - detail / peak


def renoise(x_inverted: Tensor, x0: Tensor, sigma: float, noise: Tensor, *, strength: float,
            kernel: int, flow: bool = False) -> Tensor:
    """Mix fresh `noise` into the inverted noise where `x0` is flat (see module doc)."""
    if strength <= 0:
        return x_inverted
    base = (1 - sigma) * x0 if flow else x0
    inverted_noise = (x_inverted - base) / sigma
    share = (strength * flatness(x0, kernel)).clamp(0, 1)
    mixed = (1 - share) * inverted_noise + share * noise
    mixed = mixed / torch.sqrt((1 - share) ** 2 + share**2)  # independent parts: unit variance
    return base + sigma * mixed
