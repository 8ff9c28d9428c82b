"""PerturbedAttentionGuidance Integrated: the always-on script for PAG
(`modules.sampling.guidance_pag`).

Title, first arguments and infotext keys are Forge's built-in ("PerturbedAttentionGuidance
Integrated": `enabled`, `scale`; `pag_enabled`, `pag_scale`), so API clients and pasted
Forge infotexts work unchanged. Then ours: `adaptive_scale` (diffusers'
`pag_adaptive_scale`), `layers` (diffusers' `pag_applied_layers`, comma-separated; Forge
always perturbs the middle block, our default "mid"), `start` / `end` (fraction of the
steps it runs for); written to the infotext (`pag_adaptive_scale`, `pag_layers`,
`pag_start`, `pag_end`) only when not at their defaults.

U-Net only: on a flow model (SD3, Flux.1) it adds a warning and does nothing (diffusers
has PAG for SD3's MMDiT too; that is not done here).
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.sampling.denoiser import DiscreteSchedule
from modules.sampling.guidance_pag import add_pag, parse_layers, unmatched_layers
from modules.scripts.args import ScriptArgsError, arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import ToolScript, unet_only_warning

TITLE = "PerturbedAttentionGuidance Integrated"
INFOTEXT_KEYS = {"enabled": "pag_enabled", "scale": "pag_scale",
                 "adaptive_scale": "pag_adaptive_scale", "layers": "pag_layers",
                 "start": "pag_start", "end": "pag_end"}
FORGE_KEYS = ("enabled", "scale")  # always written when on, as Forge does


@dataclass
class PAGArgs:
    enabled: bool = arg(False, "Enabled")
    scale: float = arg(3.0, "Scale", minimum=0.0, maximum=100.0, step=0.1)
    adaptive_scale: float = arg(0.0, "Adaptive scale (scale falls by this per timestep "
                                     "below 1000)", minimum=0.0, maximum=1.0, step=0.001)
    layers: str = arg("mid", "Layers (diffusers' pag_applied_layers: mid, up, down, "
                             "up_blocks.1, ...)")
    start: float = arg(0.0, "Start (fraction of steps)", minimum=0.0, maximum=1.0, step=0.01)
    end: float = arg(1.0, "End (fraction of steps)", minimum=0.0, maximum=1.0, step=0.01)

    def __post_init__(self) -> None:
        try:
            parse_layers(self.layers)
        except ValueError as error:
            raise ScriptArgsError(TITLE, "layers", str(error)) from None


class PerturbedAttentionGuidance(ToolScript):
    """Guidance away from an identity-self-attention pass (Ahn et al., 2024)."""

    Args = PAGArgs
    TITLE, INFOTEXT_KEYS = TITLE, INFOTEXT_KEYS

    @staticmethod
    def active(args: PAGArgs) -> bool:
        """Off, or scale 0 (the neutral setting), adds nothing: the image is untouched."""
        return bool(args.enabled) and args.scale > 0

    @staticmethod
    def layers(plan, args: PAGArgs) -> tuple[str, ...] | None:
        """The layer patterns, or None (and a warning) where one names no self-attention
        of this U-Net: only the job knows its model, so this cannot be a 422."""
        patterns = parse_layers(args.layers)
        unmatched = unmatched_layers(patterns, plan.loaded.family.unet)
        if not unmatched:
            return patterns
        message = (f"PAG: layers: {unmatched[0]!r} names no self-attention layer of this "
                   f"{plan.loaded.family.label} U-Net; not applied")
        if message not in plan.warnings:
            plan.warnings.append(message)
        return None

    def process(self, plan, args: PAGArgs) -> None:
        if (not self.active(args) or unet_only_warning(plan, "PAG")
                or self.layers(plan, args) is None):
            return
        defaults = PAGArgs()
        for name, key in INFOTEXT_KEYS.items():
            value = getattr(args, name)
            if name in FORGE_KEYS or value != getattr(defaults, name):
                plan.extra_params[key] = value

    def process_before_every_sampling(self, plan, args: PAGArgs,
                                      sampling: SamplingInfo) -> None:
        if not self.active(args) or sampling.cfg_hooks is None or plan.loaded.family.is_flow:
            return
        patterns = self.layers(plan, args)
        if patterns is None:
            return
        schedule = DiscreteSchedule(plan.loaded.sigmas, quantize=plan.sampler.quantize)
        add_pag(sampling.cfg_hooks, scale=args.scale, adaptive=args.adaptive_scale,
                patterns=patterns, config=plan.loaded.family.unet,
                sigma_to_t=schedule.sigma_to_t, start=args.start, end=args.end)
