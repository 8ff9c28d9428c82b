"""What the built-in guidance tools share (FreeU, SAG, PAG, Deep Shrink, HyperTile, CFG
rescale, dynamic thresholding; docs/guidance.md).

- `ToolScript`: an always-on script whose title and infotext keys are class attributes.
- `PatchWindowHook`: a CFG `before_model` hook that adds one U-Net patch to the calls of
  the steps whose progress (step / total steps) lies in [start, end]; the patch itself
  knows nothing of time.
- `unet_only_warning`: a U-Net-only tool on a flow model (SD3, Flux.1) says once that it
  does not apply, and does nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from modules.nn.unet_patches import UNetPatch, with_patch
from modules.scripts.base import AlwaysVisible, Script


class ToolScript(Script):
    """An always-on built-in tool: `TITLE` names it, `INFOTEXT_KEYS` maps its `Args`
    fields to the infotext keys it writes (and a pasted infotext fills)."""

    TITLE: ClassVar[str] = ""
    INFOTEXT_KEYS: ClassVar[Mapping[str, str]] = {}

    def title(self) -> str:
        return self.TITLE

    def show(self, is_img2img: bool):
        return AlwaysVisible

    def infotext_fields(self) -> dict[str, str]:
        return dict(self.INFOTEXT_KEYS)


@dataclass
class PatchWindowHook:
    """CFG `before_model` hook: `patch` on the U-Net calls of the steps in [start, end]."""

    patch: UNetPatch
    start: float
    end: float

    def __call__(self, params) -> None:
        progress = params.step / params.total_steps if params.total_steps > 0 else 0.0
        if self.start <= progress <= self.end:
            params.unet_kwargs["patches"] = with_patch(params.unet_kwargs.get("patches"),
                                                       self.patch)


def unet_only_warning(plan, tool: str) -> bool:
    """On a flow model: add the warning that `tool` does not apply and return True."""
    family = plan.loaded.family
    if not family.is_flow:
        return False
    message = (f"{tool}: applies to U-Net models (SD1, SD2, SDXL); not applied to this "
               f"{family.label} model")
    if message not in plan.warnings:
        plan.warnings.append(message)
    return True
