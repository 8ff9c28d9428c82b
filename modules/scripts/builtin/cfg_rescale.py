"""CFG Rescale: the always-on script for CFG rescale phi (`modules.sampling.cfg_rescale`).

Its infotext key is the one of the widely used A1111 extension (Seshelle's
CFG_Rescale_webui), "CFG Rescale", written only when it is on. A CFG-step option: it
works on every family, flow models (SD3, Flux.1) included, and with every sampler.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.sampling.cfg_rescale import CFGRescaleHook
from modules.scripts.args import arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import ToolScript

INFOTEXT_PHI = "CFG Rescale"


@dataclass
class CFGRescaleArgs:
    enabled: bool = arg(False, "Enabled")
    phi: float = arg(0.0, "CFG Rescale phi", minimum=0.0, maximum=1.0, step=0.05)


class CFGRescale(ToolScript):
    """Rescales the guided prediction toward the positive one's spread (Lin et al., 2024)."""

    Args = CFGRescaleArgs
    TITLE = "CFG Rescale"
    INFOTEXT_KEYS = {"phi": INFOTEXT_PHI}

    @staticmethod
    def active(args: CFGRescaleArgs) -> bool:
        """Off, or phi 0 (the neutral setting), adds nothing: the image is untouched."""
        return bool(args.enabled) and args.phi > 0

    def process(self, plan, args: CFGRescaleArgs) -> None:
        if self.active(args):
            plan.extra_params[INFOTEXT_PHI] = args.phi

    def process_before_every_sampling(self, plan, args: CFGRescaleArgs,
                                      sampling: SamplingInfo) -> None:
        if self.active(args) and sampling.cfg_hooks is not None:
            sampling.cfg_hooks.guidance.append(CFGRescaleHook(args.phi))
