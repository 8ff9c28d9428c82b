"""From a U-Net's eps / v output to the denoiser D(x, sigma) the samplers integrate.

The discrete DDPM training schedule (Ho et al., 2020) with LDM's "scaled linear" betas,
beta_t = (linspace(sqrt(beta_start), sqrt(beta_end), N)_t)^2, gives abar_t = prod(1 - beta)
and the equivalent variance-exploding noise levels sigma_t = sqrt((1 - abar_t) / abar_t)
(Karras et al., 2022, section 2 and table 1). The network sees the VP input
x / sqrt(sigma^2 + 1) and a timestep t found from sigma by interpolating log sigma between
table entries (k-diffusion's DiscreteSchedule) or, by default as in A1111, by snapping to
the nearest entry. Output scalings (Karras et al., table 1; Salimans & Ho, 2022, for v):

    eps:  D = x - sigma * F                          (c_skip = 1, c_out = -sigma)
    v:    D = x / (sigma^2 + 1) - sigma / sqrt(sigma^2 + 1) * F

`rescale_zero_terminal_snr` is Lin et al. (2024), "Common Diffusion Noise Schedules and
Sample Steps are Flawed", Algorithm 1; the last abar is then set to a tiny positive value
(as A1111 does) so that sigma_max stays finite. `LCMDenoiser` adds the consistency
boundary scalings of Luo et al. (2023) on LCM's 50-step skip grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from modules.nn.configs import NoiseScheduleConfig

ZERO_TERMINAL_SNR_LAST_ALPHA = 4.8973451890853435e-08

UNet = Callable[..., Tensor]  # unet(x_in, t, context=..., y=...) -> eps or v


def scaled_linear_alphas_cumprod(config: NoiseScheduleConfig) -> Tensor:
    """abar_t of the training schedule, computed in float64 as LDM does, stored in float32."""
    betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, config.num_timesteps,
                           dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def rescale_zero_terminal_snr(alphas_cumprod: Tensor) -> Tensor:
    """Shift and scale sqrt(abar) so that the last step has zero SNR, the first unchanged."""
    sqrt_abar = alphas_cumprod.double().sqrt()
    first, last = sqrt_abar[0].clone(), sqrt_abar[-1].clone()
    sqrt_abar = (sqrt_abar - last) * first / (first - last)
    rescaled = (sqrt_abar**2).float()
    rescaled[-1] = ZERO_TERMINAL_SNR_LAST_ALPHA
    return rescaled


def discrete_sigmas(alphas_cumprod: Tensor) -> Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t), ascending with t (float32)."""
    alphas_cumprod = alphas_cumprod.float()
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def model_sigmas(config: NoiseScheduleConfig, *, zero_terminal_snr: bool = False) -> Tensor:
    """The model's sigma table for a training schedule."""
    alphas_cumprod = scaled_linear_alphas_cumprod(config)
    if zero_terminal_snr:
        alphas_cumprod = rescale_zero_terminal_snr(alphas_cumprod)
    return discrete_sigmas(alphas_cumprod)


class SigmaTable:
    """A model's ascending sigma table (float32) and its two ends."""

    def __init__(self, sigmas: Tensor) -> None:
        self.sigmas = sigmas.float()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])


class DiscreteSchedule(SigmaTable):
    """A sigma table with sigma <-> t conversion."""

    def __init__(self, sigmas: Tensor, *, quantize: bool = True) -> None:
        super().__init__(sigmas)
        self.log_sigmas = self.sigmas.log()
        self.quantize = quantize

    def sigma_to_t(self, sigma: Tensor, quantize: bool | None = None) -> Tensor:
        """Timesteps of a batch of sigmas: nearest entry, or log-sigma interpolation."""
        quantize = self.quantize if quantize is None else quantize
        log_sigmas = self.log_sigmas.to(sigma.device)
        log_sigma = sigma.float().log()
        if quantize:
            return (log_sigma[None] - log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        # Bracketing entries and the clamped linear weight between them.
        high = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, len(log_sigmas) - 1)
        low_value, high_value = log_sigmas[high - 1], log_sigmas[high]
        w = ((log_sigma - low_value) / (high_value - low_value)).clamp(0, 1)
        return ((high - 1) + w).view(sigma.shape)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        log_sigmas = self.log_sigmas.to(t.device)
        t = t.float()
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[high]).exp()


def _expand(values: Tensor, like: Tensor) -> Tensor:
    """Per-batch scalars shaped to broadcast over `like`."""
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


class Denoiser(DiscreteSchedule):
    """D(x, sigma) from an eps- or v-predicting U-Net trained on a discrete schedule."""

    def __init__(self, unet: UNet, *, sigmas: Tensor, prediction: Literal["eps", "v"] = "eps",
                 quantize: bool = True) -> None:
        if prediction not in ("eps", "v"):
            raise ValueError(f"prediction must be 'eps' or 'v', got {prediction!r}")
        super().__init__(sigmas, quantize=quantize)
        self.unet = unet
        self.prediction = prediction

    def timestep(self, sigma: Tensor) -> Tensor:
        """The timestep given to the U-Net for these sigmas."""
        return self.sigma_to_t(sigma)

    def __call__(self, x: Tensor, sigma: Tensor, *, context: Tensor, y: Tensor | None = None,
                 c_concat: Tensor | None = None, **unet_kwargs: Any) -> Tensor:
        sigma_b = _expand(sigma, x)
        c_in = 1 / (sigma_b**2 + 1) ** 0.5
        x_in = x * c_in
        # Inpainting / depth models take extra channels next to the scaled latent.
        if c_concat is not None:
            x_in = torch.cat([x_in, c_concat.to(x_in.dtype)], dim=1)
        out = self.unet(x_in, self.timestep(sigma), context=context, y=y, **unet_kwargs)
        return self.scale_output(x, sigma_b, out)

    def scale_output(self, x: Tensor, sigma_b: Tensor, out: Tensor) -> Tensor:
        """c_skip * x + c_out * F for the model's prediction type."""
        if self.prediction == "eps":
            return x - sigma_b * out
        return x / (sigma_b**2 + 1) - sigma_b / (sigma_b**2 + 1) ** 0.5 * out


LCM_ORIGINAL_STEPS = 50
LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0


def lcm_sigmas(model_sigmas_table: Tensor, original_steps: int = LCM_ORIGINAL_STEPS) -> Tensor:
    """LCM's grid: every (N // 50)-th sigma, ending at the last timestep (t = 19, 39, ..., 999)."""
    skip = len(model_sigmas_table) // original_steps
    return model_sigmas_table[skip - 1::skip].clone()


class LCMDenoiser(Denoiser):
    """D for latent consistency models: snap to the 50-step grid, then c_skip x + c_out x0."""

    def __init__(self, unet: UNet, *, sigmas: Tensor,
                 prediction: Literal["eps", "v"] = "eps") -> None:
        self.skip = len(sigmas) // LCM_ORIGINAL_STEPS
        super().__init__(unet, sigmas=lcm_sigmas(sigmas), prediction=prediction, quantize=True)

    def timestep(self, sigma: Tensor) -> Tensor:
        return self.sigma_to_t(sigma, quantize=True) * self.skip + (self.skip - 1)

    def scale_output(self, x: Tensor, sigma_b: Tensor, out: Tensor) -> Tensor:
        x0 = super().scale_output(x, sigma_b, out)
        scaled_t = _expand(self.timestep(sigma_b.flatten()).float(), x) * LCM_TIMESTEP_SCALING
        c_skip = LCM_SIGMA_DATA**2 / (scaled_t**2 + LCM_SIGMA_DATA**2)
        c_out = scaled_t / (scaled_t**2 + LCM_SIGMA_DATA**2) ** 0.5
        return c_out * x0 + c_skip * x
