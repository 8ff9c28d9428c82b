"""SelfAttentionGuidance Integrated: the always-on script for SAG
(`modules.sampling.guidance_sag`).

Title, arguments, defaults and infotext keys are Forge's built-in ("SelfAttentionGuidance
Integrated (SD 1.x, SD 2.x, SDXL)": `enabled, scale, blur_sigma, threshold`;
`sag_enabled`, `sag_scale`, `sag_blur_sigma`, `sag_threshold`), so API clients and pasted
Forge infotexts work unchanged. diffusers' pipeline is blur_sigma 1.0, threshold 1.0.

Neutral settings add nothing: off, scale 0, or blur sigma 0 (no blur: the degraded input
is the step's own latent, so the term is zero). U-Net only: on a flow model (SD3,
Flux.1) it adds a warning and does nothing; a U-Net whose middle block has no attention
gets a warning too.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.sampling.guidance_sag import add_sag
from modules.scripts.args import arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import ToolScript, unet_only_warning

TITLE = "SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)"
INFOTEXT_KEYS = {"enabled": "sag_enabled", "scale": "sag_scale",
                 "blur_sigma": "sag_blur_sigma", "threshold": "sag_threshold"}


@dataclass
class SAGArgs:
    enabled: bool = arg(False, "Enabled")
    scale: float = arg(0.5, "Scale", minimum=-2.0, maximum=5.0, step=0.01)
    blur_sigma: float = arg(2.0, "Blur Sigma", minimum=0.0, maximum=10.0, step=0.01)
    threshold: float = arg(1.0, "Blur mask threshold", minimum=0.0, maximum=2.0, step=0.01)


class SelfAttentionGuidance(ToolScript):
    """Guidance away from a blurred-where-attended pass (Hong et al., 2023)."""

    Args = SAGArgs
    TITLE, INFOTEXT_KEYS = TITLE, INFOTEXT_KEYS

    @staticmethod
    def active(args: SAGArgs) -> bool:
        return bool(args.enabled) and args.scale != 0 and args.blur_sigma > 0

    @staticmethod
    def applies(plan) -> bool:
        """A U-Net with attention in its middle block (else a warning)."""
        if unet_only_warning(plan, "SAG"):
            return False
        if plan.loaded.family.unet.transformer_depth_middle > 0:
            return True
        message = "SAG: this U-Net's middle block has no self-attention; not applied"
        if message not in plan.warnings:
            plan.warnings.append(message)
        return False

    def process(self, plan, args: SAGArgs) -> None:
        if not self.active(args) or not self.applies(plan):
            return
        for name, key in INFOTEXT_KEYS.items():
            plan.extra_params[key] = getattr(args, name)

    def process_before_every_sampling(self, plan, args: SAGArgs,
                                      sampling: SamplingInfo) -> None:
        if not self.active(args) or sampling.cfg_hooks is None or not self.applies(plan):
            return
        add_sag(sampling.cfg_hooks, scale=args.scale, blur_sigma=args.blur_sigma,
                threshold=args.threshold)
