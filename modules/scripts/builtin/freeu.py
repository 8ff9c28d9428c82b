"""FreeU Integrated: the always-on script for FreeU (`modules.nn.guidance_freeu`).

Title, argument order, defaults and infotext keys are Forge's built-in "FreeU Integrated
(SD 1.x, SD 2.x, SDXL)" (`enabled, b1, b2, s1, s2`; `freeu_enabled`, `freeu_b1`, ...), so
API clients and pasted Forge infotexts work unchanged. Then ours: `start` / `end` (the
fraction of the steps it runs for, like the sd-webui-freeu extension's start/stop),
`version` ("2": structure-aware backbone factor, Forge's; "1": the constant one) and
`blocks` (which decoder blocks: "channels" by h's channel count, as Forge and the
official code; "levels" by resolution level, as diffusers' `enable_freeu`), written to
the infotext only when not at their defaults.

U-Net only: on a flow model (SD3, Flux.1) it adds a warning and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.nn.guidance_freeu import FreeUPatch
from modules.scripts.args import arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import PatchWindowHook, ToolScript, unet_only_warning

TITLE = "FreeU Integrated (SD 1.x, SD 2.x, SDXL)"
INFOTEXT_KEYS = {"enabled": "freeu_enabled", "b1": "freeu_b1", "b2": "freeu_b2",
                 "s1": "freeu_s1", "s2": "freeu_s2", "start": "freeu_start",
                 "end": "freeu_end", "version": "freeu_version", "blocks": "freeu_blocks"}
FORGE_KEYS = ("enabled", "b1", "b2", "s1", "s2")  # always written when on, as Forge does


@dataclass
class FreeUArgs:
    enabled: bool = arg(False, "Enabled")
    b1: float = arg(1.01, "B1 (backbone, deepest stage)", minimum=0.0, maximum=2.0, step=0.01)
    b2: float = arg(1.02, "B2 (backbone, second stage)", minimum=0.0, maximum=2.0, step=0.01)
    s1: float = arg(0.99, "S1 (skip, deepest stage)", minimum=0.0, maximum=4.0, step=0.01)
    s2: float = arg(0.95, "S2 (skip, second stage)", minimum=0.0, maximum=4.0, step=0.01)
    start: float = arg(0.0, "Start (fraction of steps)", minimum=0.0, maximum=1.0, step=0.01)
    end: float = arg(1.0, "End (fraction of steps)", minimum=0.0, maximum=1.0, step=0.01)
    version: str = arg("2", "Version", choices=("1", "2"))
    blocks: str = arg("channels", "Blocks (channels: Forge; levels: diffusers)",
                      choices=("channels", "levels"))


class FreeU(ToolScript):
    """Backbone and skip scaling in the decoder (Si et al., 2023)."""

    Args = FreeUArgs
    TITLE, INFOTEXT_KEYS = TITLE, INFOTEXT_KEYS

    @staticmethod
    def active(args: FreeUArgs) -> bool:
        """Off, or every factor 1 (the neutral setting), adds nothing: the image is untouched."""
        neutral = args.b1 == args.b2 == args.s1 == args.s2 == 1.0
        return bool(args.enabled) and not neutral

    def process(self, plan, args: FreeUArgs) -> None:
        if not self.active(args) or unet_only_warning(plan, "FreeU"):
            return
        defaults = FreeUArgs()
        for name, key in INFOTEXT_KEYS.items():
            value = getattr(args, name)
            if name in FORGE_KEYS or value != getattr(defaults, name):
                plan.extra_params[key] = value

    def process_before_every_sampling(self, plan, args: FreeUArgs,
                                      sampling: SamplingInfo) -> None:
        if (not self.active(args) or sampling.cfg_hooks is None or plan.loaded.family.is_flow):
            return
        config = plan.loaded.family.unet
        patch = FreeUPatch(b1=args.b1, b2=args.b2, s1=args.s1, s2=args.s2,
                           model_channels=config.model_channels,
                           levels=len(config.channel_mult), version=args.version,
                           rule=args.blocks)
        sampling.cfg_hooks.before_model.append(PatchWindowHook(patch, args.start, args.end))
