"""The scripts of one job and the calls into them, each isolated from the job.

`ScriptRun` is built per request (`ExtensionRegistry.script_run`) with every active
always-on script and its parsed `Args`. Processing calls `run.call(hook, plan, ...)`
at the documented points; a script that raises is logged, its error is added once to
the job's warnings, and the job goes on. Several scripts on the same hook all run,
in load order. The global cfg callbacks become `modules.sampling.cfg.Hooks`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.sampling.cfg import Hooks
from modules.scripts.base import HOOK_NAMES, Script
from modules.scripts.callbacks import CallbackRegistry, ImageSavedParams, guarded


@dataclass
class ScriptRun:
    """Always-on scripts with their args, the callbacks, and where errors go."""

    scripts: list[tuple[Script, Any]] = field(default_factory=list)
    callbacks: CallbackRegistry | None = None
    warnings: list[str] = field(default_factory=list)

    @staticmethod
    def empty() -> "ScriptRun":
        return ScriptRun()

    def call(self, hook: str, plan, *extra: Any) -> None:
        """Call `hook` on every script (`plan, args, *extra`); errors become warnings."""
        if hook not in HOOK_NAMES:
            raise ValueError(f"unknown script hook {hook!r}")
        for script, args in self.scripts:
            method = getattr(script, hook)
            if getattr(method, "__func__", None) is getattr(Script, hook):
                continue  # not overridden
            where = f"script {script.title()!r}"
            if script.extension:
                where += f" (extension {script.extension})"
            guarded(method, plan, args, *extra, where=f"{where} {hook}",
                    warnings=getattr(plan, "warnings", self.warnings))

    def cfg_hooks(self) -> Hooks:
        """cfg_denoiser / cfg_denoised / cfg_after_cfg callbacks as CFGDenoiser hooks."""
        if self.callbacks is None:
            return Hooks()
        wrap = lambda name: [self._guard(cb.fn, name, cb.extension)  # noqa: E731
                             for cb in self.callbacks.of(name)]
        return Hooks(before_model=wrap("cfg_denoiser"), after_model=wrap("cfg_denoised"),
                     after_cfg=wrap("cfg_after_cfg"))

    def _guard(self, fn, name: str, extension: str):
        where = f"{extension or 'builtin'} {name} callback"
        return lambda params: guarded(fn, params, where=where, warnings=self.warnings)

    def image_saved(self, image, plan, filename: str, infotext: str) -> None:
        if self.callbacks is not None:
            self.callbacks.call("image_saved", ImageSavedParams(image, plan, filename, infotext),
                                warnings=self.warnings)


def script_run_for(runtime, params, warnings: list[str]) -> ScriptRun:
    """The always-on scripts of a request (img2img when it has init images)."""
    registry = getattr(runtime, "extensions", None)
    if registry is None:
        return ScriptRun(warnings=warnings)
    return registry.script_run(alwayson_args=getattr(params, "alwayson_scripts", None) or {},
                               is_img2img=hasattr(params, "init_images"), warnings=warnings)
