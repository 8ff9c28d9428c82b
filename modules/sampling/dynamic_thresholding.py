"""Dynamic thresholding ("CFG-Fix"): a high CFG scale with the value spread of a lower one.

After mcmonkey's sd-dynamic-thresholding (Forge's "DynamicThresholding (CFG-Fix)
Integrated"), itself after Imagen's dynamic thresholding (Saharia et al., 2022,
"Photorealistic Text-to-Image Diffusion Models with Deep Language Understanding",
section 2.3), written here from the published description. In D space (x0 estimates),
per image, with U the negative prediction and C the positive one:

    real  = U + cfg_scale   * (C - U)      (what plain CFG gives)
    mimic = U + mimic_scale * (C - U)      (the look to keep)

Both are flattened per channel over the map and centred on their per-channel mean.
Their spreads (per channel with `separate_feature_channels`, else over the whole image)
are measured on the centred values by `variability_measure`: AD takes the mimic's
largest |value| and the real one's `threshold_percentile` quantile of |value|; STD takes
standard deviations. `scaling_startpoint` MEAN rescales around the mean, ZERO around
zero (the real prediction scaled as a whole, nothing clamped):

* MEAN + AD:  limit = max(real_spread, mimic_spread);
              out = clamp(real_centred, -limit, limit) / limit * mimic_spread + mean
* MEAN + STD: out = real_centred / real_spread * mimic_spread + mean
* ZERO:       out = real * mimic_spread / real_spread

and the result is `interpolate_phi * out + (1 - interpolate_phi) * real`. With
mimic_scale == cfg_scale, percentile 1 and phi 1 the MEAN results are the real CFG
prediction again (up to rounding): the spreads are equal and nothing is clamped.

Both scales may follow a schedule over the steps (`scheduled_scale`): scale' =
min + (scale - min) * f(frac), frac = step / (total_steps - 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from modules.sampling.guidance import GuidanceParams

# f(frac, sched_val) of each schedule mode (the extension's definitions; "Cosine" takes a
# quarter turn over the run, "Half Cosine" one radian).
MODES: dict[str, Callable[[float, float], float]] = {
    "Constant": lambda frac, s: 1.0,
    "Linear Down": lambda frac, s: 1.0 - frac,
    "Cosine Down": lambda frac, s: math.cos(frac * math.pi / 2),
    "Half Cosine Down": lambda frac, s: math.cos(frac),
    "Linear Up": lambda frac, s: frac,
    "Cosine Up": lambda frac, s: 1.0 - math.cos(frac * math.pi / 2),
    "Half Cosine Up": lambda frac, s: 1.0 - math.cos(frac),
    "Power Up": lambda frac, s: math.pow(frac, s),
    "Power Down": lambda frac, s: 1.0 - math.pow(frac, s),
}
STARTPOINTS = ("MEAN", "ZERO")
MEASURES = ("AD", "STD")


@dataclass(frozen=True)
class DynThresh:
    """One job's dynamic-thresholding settings (module docstring for their meaning)."""

    mimic_scale: float = 7.0
    threshold_percentile: float = 1.0
    mimic_mode: str = "Constant"
    mimic_scale_min: float = 0.0
    cfg_mode: str = "Constant"
    cfg_scale_min: float = 0.0
    sched_val: float = 1.0
    separate_feature_channels: bool = True
    scaling_startpoint: str = "MEAN"
    variability_measure: str = "AD"
    interpolate_phi: float = 1.0


def scheduled_scale(scale: float, mode: str, minimum: float, sched_val: float,
                    step: int, total_steps: int) -> float:
    """`scale` at this step under `mode`: minimum + (scale - minimum) * f(frac)."""
    frac = step / (total_steps - 1) if total_steps > 1 else 0.0
    return minimum + (scale - minimum) * MODES[mode](frac, sched_val)


def _spread(values: Tensor, *, per_channel: bool, quantile: float | None, measure: str) -> Tensor:
    """The spread of (B, C, N) values per image (and channel): AD = quantile (default max)
    of |values|, STD = standard deviation; shaped (B, C or 1, 1) to broadcast."""
    flat = values if per_channel else values.flatten(1).unsqueeze(1)
    if measure == "STD":
        return flat.std(dim=2, keepdim=True)
    magnitude = flat.abs()
    if quantile is None or quantile >= 1.0:
        return magnitude.amax(dim=2, keepdim=True)
    return torch.quantile(magnitude, quantile, dim=2, keepdim=True)


def thresholded(uncond: Tensor, cond: Tensor, cfg_scale: float, mimic_scale: float,
                cfg: DynThresh) -> Tensor:
    """The dynamically thresholded prediction (module docstring) for (B, C, H, W) inputs."""
    relative = cond - uncond
    real = (uncond + relative * cfg_scale).flatten(2)
    mimic = (uncond + relative * mimic_scale).flatten(2)
    mean = real.mean(dim=2, keepdim=True)
    real_c = real - mean
    mimic_c = mimic - mimic.mean(dim=2, keepdim=True)
    per_channel = cfg.separate_feature_channels
    real_spread = _spread(real_c, per_channel=per_channel, quantile=cfg.threshold_percentile,
                          measure=cfg.variability_measure)
    mimic_spread = _spread(mimic_c, per_channel=per_channel, quantile=None,
                           measure=cfg.variability_measure)
    if cfg.scaling_startpoint == "ZERO":
        out = real * (mimic_spread / real_spread)
    elif cfg.variability_measure == "STD":
        out = real_c / real_spread * mimic_spread + mean
    else:
        limit = torch.maximum(real_spread, mimic_spread)
        out = torch.maximum(torch.minimum(real_c, limit), -limit) / limit * mimic_spread + mean
    if cfg.interpolate_phi != 1.0:
        out = out * cfg.interpolate_phi + real * (1.0 - cfg.interpolate_phi)
    return out.unflatten(2, uncond.shape[2:])


class DynThreshHook:
    """A `Hooks.guidance` hook replacing the CFG combination by `thresholded`."""

    def __init__(self, settings: DynThresh) -> None:
        self.settings = settings

    def __call__(self, params: GuidanceParams) -> None:
        if params.uncond is None:  # no negative rows this step: nothing to threshold
            return
        s = self.settings
        cfg_scale = scheduled_scale(params.cfg_scale, s.cfg_mode, s.cfg_scale_min, s.sched_val,
                                    params.step, params.total_steps)
        mimic = scheduled_scale(s.mimic_scale, s.mimic_mode, s.mimic_scale_min, s.sched_val,
                                params.step, params.total_steps)
        with torch.no_grad():
            out = thresholded(params.uncond.float(), params.cond.float(), cfg_scale, mimic, s)
        params.denoised = out.to(params.denoised.dtype)
