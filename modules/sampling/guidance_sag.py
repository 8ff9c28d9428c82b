"""Self-Attention Guidance (SAG) as a CFG guidance hook and a recording U-Net patch.

Hong et al. (2023), "Improving Sample Quality of Diffusion Models Using Self-Attention
Guidance", https://arxiv.org/abs/2210.00939, as diffusers' `StableDiffusionSAGPipeline`:

1. The main pass records the self-attention probabilities of the middle block's first
   transformer block (`attn1`); per image, the mask is where the attention mass a key
   token receives (mean over heads, summed over the queries) exceeds `threshold`
   (diffusers: 1.0), at the middle block's token map size, upsampled to the latent
   with nearest-neighbour interpolation.
2. The x0 prediction of the guidance source (the negative prompt's prediction under CFG,
   else the positive one) is blurred where the mask is set (Gaussian, `blur_sigma`;
   kernel size 2 * ceil(4 * sigma) + 1, which is diffusers' fixed 9 at sigma 1, capped
   so that the reflect padding fits the latent), and re-noised with the source's own
   eps: x_deg = x0_deg + sigma * eps (diffusers' `scheduler.add_noise(x0_deg, eps, t)`
   in the VE parameterisation of our samplers).
3. The model runs on x_deg with the same prompt as the source, and in eps space
   eps += s * (eps_src - eps_deg), i.e. in D space
   D += s * ((D_src - x) - (D_deg - x_deg)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from modules.nn.unet_patches import (
    Attend,
    AttentionPlace,
    UNetPatch,
    UNetPatches,
    with_patch,
)
from modules.sampling.guidance import GuidanceParams, rows_per_image


def kernel_size(blur_sigma: float) -> int:
    """Odd Gaussian kernel covering +-4 sigma: 9 at sigma 1 (diffusers' SAG)."""
    return 2 * math.ceil(4 * blur_sigma) + 1


def gaussian_blur(x: torch.Tensor, blur_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur per channel with reflect padding (diffusers' kernel).

    The kernel is capped at 2 * (min(H, W) - 1) + 1 so that reflect padding fits small
    latents; taps are at integer offsets, weights exp(-x^2 / (2 sigma^2)) normalised."""
    half = min((kernel_size(blur_sigma) - 1) // 2, min(x.shape[-2:]) - 1)
    if half <= 0 or blur_sigma <= 0:
        return x
    offsets = torch.linspace(-half, half, 2 * half + 1)
    pdf = torch.exp(-0.5 * (offsets / blur_sigma).pow(2))
    taps = (pdf / pdf.sum()).to(device=x.device, dtype=x.dtype)
    kernel = torch.mm(taps[:, None], taps[None, :]).expand(x.shape[-3], 1, 2 * half + 1,
                                                           2 * half + 1)
    padded = F.pad(x, [half, half, half, half], mode="reflect")
    return F.conv2d(padded, kernel, groups=x.shape[-3])


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) per head, (B, heads, queries, keys), computed explicitly;
    the softmax in float32 (half-precision scores could overflow), as the sliced kernel."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.softmax(dim=-1, dtype=torch.float32)


def attention_mass(probs: torch.Tensor) -> torch.Tensor:
    """(B, heads, queries, keys) -> the mass each key receives: mean over heads, summed
    over queries (diffusers' `attn_map.mean(1).sum(1)`), shaped (B, keys)."""
    return probs.mean(dim=1).sum(dim=1)


def sag_mask(mass: torch.Tensor, height: int, width: int, threshold: float,
             latent_size: tuple[int, int]) -> torch.Tensor:
    """(B, keys) attention mass -> (B, 1, H, W) 0/1 mask on the latent (nearest upsampling)."""
    mask = (mass > threshold).to(mass.dtype).reshape(-1, 1, height, width)
    return F.interpolate(mask, size=latent_size)


def degrade(x0: torch.Tensor, mask: torch.Tensor, blur_sigma: float) -> torch.Tensor:
    """x0 blurred where `mask` is 1, unchanged elsewhere."""
    mask = mask.to(x0)
    return gaussian_blur(x0, blur_sigma) * mask + x0 * (1 - mask)


@dataclass
class AttentionRecorder(UNetPatch):
    """Records the attention mass of the middle block's first `attn1` per row of the main
    pass (`records`: extra passes leave it out) and computes that layer explicitly."""

    records = True
    masses: dict[int, torch.Tensor] = field(default_factory=dict)
    size: tuple[int, int] | None = None

    def for_rows(self, rows: list[int]) -> UNetPatch:
        return _RowsRecorder(self, list(rows))

    def changes_self_attention(self, place: AttentionPlace) -> bool:
        return place.block.stage == "middle" and place.transformer == 0

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       place: AttentionPlace, attend: Attend) -> torch.Tensor:
        return self.record(list(range(q.shape[0])), q, k, v, place)

    def record(self, rows: list[int], q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               place: AttentionPlace) -> torch.Tensor:
        probs = attention_probs(q, k)
        mass = attention_mass(probs).detach()
        for i, row in enumerate(rows):
            self.masses[row] = mass[i]
        self.size = (place.height, place.width)
        return torch.matmul(probs.to(v.dtype), v)


@dataclass(frozen=True)
class _RowsRecorder(UNetPatch):
    """The recorder for a U-Net call over some of the step's rows."""

    parent: AttentionRecorder
    rows: list[int]
    records = True

    def changes_self_attention(self, place: AttentionPlace) -> bool:
        return self.parent.changes_self_attention(place)

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       place: AttentionPlace, attend: Attend) -> torch.Tensor:
        return self.parent.record(self.rows, q, k, v, place)


@dataclass
class SAGRecordHook:
    """CFG `before_model` hook: adds the recorder to every main pass."""

    recorder: AttentionRecorder

    def __call__(self, params) -> None:
        self.recorder.masses.clear()
        params.unet_kwargs["patches"] = with_patch(params.unet_kwargs.get("patches"),
                                                   self.recorder)


@dataclass
class SAGHook:
    """CFG guidance hook: the degraded pass and the SAG term (module docstring)."""

    scale: float
    blur_sigma: float
    threshold: float
    recorder: AttentionRecorder

    def __call__(self, params: GuidanceParams) -> None:
        if self.recorder.size is None or not self.recorder.masses:
            return  # the middle block has no attention (or the pass did not run it)
        # diffusers guides from the negative prompt's prediction only under CFG (scale > 1).
        use_uncond = params.uncond is not None and params.cfg_scale > 1
        source = params.uncond if use_uncond else params.cond
        rows = rows_per_image(params.row_images, params.row_is_uncond, params.x.shape[0],
                              use_uncond)
        mass = torch.stack([self.recorder.masses[row] for row in rows])
        x, sigma = params.x, params.sigma.view(-1, *([1] * (params.x.ndim - 1))).to(params.x)
        eps = (x - source) / sigma
        mask = sag_mask(mass, *self.recorder.size, self.threshold, tuple(x.shape[-2:]))
        x_deg = degrade(source, mask, self.blur_sigma) + sigma * eps
        d_deg = params.rerun(UNetPatches(), x=x_deg, uncond=use_uncond).to(x)
        term = (source - x) - (d_deg - x_deg)
        params.denoised = params.denoised + self.scale * term


def add_sag(hooks, *, scale: float, blur_sigma: float, threshold: float) -> None:
    """Append SAG's recorder (`before_model`) and its term (`guidance`) to CFG `hooks`."""
    recorder = AttentionRecorder()
    hooks.before_model.append(SAGRecordHook(recorder))
    hooks.guidance.append(SAGHook(scale, blur_sigma, threshold, recorder))
