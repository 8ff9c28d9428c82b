"""DynamicThresholding (CFG-Fix) Integrated: the always-on script of
`modules.sampling.dynamic_thresholding`, with Forge's title, argument order and defaults
and the infotext keys of mcmonkey's extension (`dynthres_*`, all written when it is on,
as Forge does). A CFG-step option: every family (flow models included), every sampler.

Schedule modes offered: those of `MODES` (the extension's "Linear Repeating", "Cosine
Repeating" and "Sawtooth" are not implemented, so not offered).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from modules.sampling.dynamic_thresholding import (
    MEASURES,
    MODES,
    STARTPOINTS,
    DynThresh,
    DynThreshHook,
)
from modules.scripts.args import arg
from modules.scripts.base import SamplingInfo
from modules.scripts.builtin.tool_script import ToolScript

_MODES = tuple(MODES)


@dataclass
class DynThreshArgs:
    enabled: bool = arg(False, "Enable Dynamic Thresholding (CFG Scale Fix)")
    mimic_scale: float = arg(7.0, "Mimic CFG Scale", minimum=0.0, maximum=100.0, step=0.5)
    threshold_percentile: float = arg(1.0, "Top percentile of latents to clamp", minimum=0.0,
                                      maximum=1.0, step=0.001)
    mimic_mode: str = arg("Constant", "Mimic Scale Scheduler", choices=_MODES)
    mimic_scale_min: float = arg(0.0, "Minimum value of the Mimic Scale Scheduler",
                                 minimum=0.0, maximum=30.0, step=0.5)
    cfg_mode: str = arg("Constant", "CFG Scale Scheduler", choices=_MODES)
    cfg_scale_min: float = arg(0.0, "Minimum value of the CFG Scale Scheduler", minimum=0.0,
                               maximum=30.0, step=0.5)
    sched_val: float = arg(1.0, "Scheduler Value", minimum=0.0, maximum=40.0, step=0.01)
    separate_feature_channels: str = arg("enable", "Separate Feature Channels",
                                         choices=("enable", "disable"))
    scaling_startpoint: str = arg("MEAN", "Scaling Startpoint", choices=STARTPOINTS)
    variability_measure: str = arg("AD", "Variability Measure", choices=MEASURES)
    interpolate_phi: float = arg(1.0, "Interpolate Phi", minimum=0.0, maximum=1.0, step=0.01)


def settings_of(args: DynThreshArgs) -> DynThresh:
    """The maths' settings from the script's arguments."""
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.name != "enabled"}
    values["separate_feature_channels"] = args.separate_feature_channels == "enable"
    return DynThresh(**values)


class DynamicThresholding(ToolScript):
    """Keeps the value spread of `mimic_scale` while guiding at the job's CFG scale."""

    Args = DynThreshArgs
    TITLE = "DynamicThresholding (CFG-Fix) Integrated"
    INFOTEXT_KEYS = {f.name: f"dynthres_{f.name}" for f in fields(DynThreshArgs)}

    def process(self, plan, args: DynThreshArgs) -> None:
        if args.enabled:
            for name, key in self.infotext_fields().items():
                plan.extra_params[key] = getattr(args, name)

    def process_before_every_sampling(self, plan, args: DynThreshArgs,
                                      sampling: SamplingInfo) -> None:
        if args.enabled and sampling.cfg_hooks is not None:
            sampling.cfg_hooks.guidance.append(DynThreshHook(settings_of(args)))
