"""Kohya HRFix Integrated: the always-on script for Deep Shrink (`modules.nn.guidance_deep_shrink`).

Title, argument order, defaults and infotext keys are Forge's built-in "Kohya HRFix
Integrated" (`enabled, block_number, downscale_factor, start_percent, end_percent,
downscale_after_skip, downscale_method, upscale_method`; `kohya_hrfix_<name>`). The
window [start_percent, end_percent] is a fraction of the sampler call's steps (Forge
measures it on the model's timestep scale instead, so the same numbers cover slightly
different steps there). `block_number` is an index into the U-Net's `input_blocks`
(SD1/SDXL: 3 = the first downsampling block); a number the loaded model does not have
is a warning and the tool is skipped. Forge's "bislerp" method is not offered.

U-Net only: on a flow model (SD3, Flux.1) it adds a warning and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from modules.nn.guidance_deep_shrink import METHODS, DeepShrinkPatch
from modules.nn.unet_patches import block_places
from modules.scripts.args import arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import PatchWindowHook, ToolScript, unet_only_warning

TITLE = "Kohya HRFix Integrated"
FIELDS = ("enabled", "block_number", "downscale_factor", "start_percent", "end_percent",
          "downscale_after_skip", "downscale_method", "upscale_method")
INFOTEXT_KEYS = {name: f"kohya_hrfix_{name}" for name in FIELDS}


@dataclass
class DeepShrinkArgs:
    enabled: bool = arg(False, "Enabled")
    block_number: int = arg(3, "Block number", minimum=1, maximum=32, step=1)
    downscale_factor: float = arg(2.0, "Downscale factor", minimum=0.1, maximum=9.0, step=0.001)
    start_percent: float = arg(0.0, "Start percent", minimum=0.0, maximum=1.0, step=0.001)
    end_percent: float = arg(0.35, "End percent", minimum=0.0, maximum=1.0, step=0.001)
    downscale_after_skip: bool = arg(True, "Downscale after skip")
    downscale_method: str = arg("bicubic", "Downscale method", choices=METHODS)
    upscale_method: str = arg("bicubic", "Upscale method", choices=METHODS)


def encoder_block_count(plan) -> int:
    """How many `input_blocks` the loaded U-Net has (block numbers are 0 .. count - 1)."""
    config = plan.loaded.family.unet
    inputs, _, _ = block_places(transformer_depth=tuple(config.transformer_depth),
                                num_res_blocks=config.num_res_blocks)
    return len(inputs)


class DeepShrink(ToolScript):
    """Shrinks the deep feature maps for the early steps so large images keep one composition."""

    Args = DeepShrinkArgs
    TITLE, INFOTEXT_KEYS = TITLE, INFOTEXT_KEYS

    @staticmethod
    def active(args: DeepShrinkArgs) -> bool:
        """Off, factor 1 or an empty window (neutral) adds nothing: the image is untouched."""
        return (bool(args.enabled) and args.downscale_factor != 1.0
                and args.start_percent <= args.end_percent)

    def applies(self, plan, args: DeepShrinkArgs) -> bool:
        """Active, on a U-Net model that has the block; warns (once) when it cannot apply."""
        if not self.active(args) or unet_only_warning(plan, "Kohya HRFix (Deep Shrink)"):
            return False
        count = encoder_block_count(plan)
        if args.block_number >= count:
            message = (f"Kohya HRFix (Deep Shrink): block_number {args.block_number} does not "
                       f"exist in this model (its encoder blocks are 0..{count - 1}); "
                       f"not applied")
            if message not in plan.warnings:
                plan.warnings.append(message)
            return False
        return True

    def process(self, plan, args: DeepShrinkArgs) -> None:
        if self.applies(plan, args):
            for name, key in INFOTEXT_KEYS.items():
                plan.extra_params[key] = getattr(args, name)

    def process_before_every_sampling(self, plan, args: DeepShrinkArgs,
                                      sampling: SamplingInfo) -> None:
        if sampling.cfg_hooks is None or not self.applies(plan, args):
            return
        patch = DeepShrinkPatch(block=args.block_number, downscale_factor=args.downscale_factor,
                                after_skip_connection=args.downscale_after_skip,
                                downscale_method=args.downscale_method,
                                upscale_method=args.upscale_method)
        sampling.cfg_hooks.before_model.append(
            PatchWindowHook(patch, args.start_percent, args.end_percent))
