"""Global callbacks (A1111's `script_callbacks`), held per Runtime, never in module globals.

Extensions register through the `ExtensionContext` they get at load time
(`ctx.callbacks.on("cfg_denoiser", fn)`), so a callback always knows which extension
it belongs to. `call(name, *args)` runs every callback of a name in registration
order (load order, then `metadata.ini` order); one that raises is logged and
reported in `errors` (and in the job's warnings, through `run.py`), and the others
still run. The cfg callbacks receive `modules.sampling.cfg`'s typed params.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

CALLBACK_NAMES = (
    "app_started",  # fn(app: ExtensionApp)
    "model_loaded",  # fn(loaded model)
    "cfg_denoiser",  # fn(CFGDenoiserParams)
    "cfg_denoised",  # fn(CFGDenoisedParams)
    "cfg_after_cfg",  # fn(AfterCFGParams)
    "image_saved",  # fn(ImageSavedParams)
    "ui_tabs",  # fn(runtime) -> [(title, build)], called by webui only
    "ui_settings",  # fn(runtime), called by webui only
    "infotext_pasted",  # fn(infotext: str, params: dict) -> None (may edit params)
)


@dataclass
class ImageSavedParams:
    """After an image was written: the image, the job's plan, the file and its infotext."""

    image: Any
    plan: Any
    filename: str
    infotext: str


@dataclass
class Callback:
    name: str
    fn: Callable
    extension: str


@dataclass
class CallbackRegistry:
    """Callbacks by name; errors of the last calls are kept for reporting."""

    callbacks: dict[str, list[Callback]] = field(
        default_factory=lambda: {name: [] for name in CALLBACK_NAMES})
    errors: list[str] = field(default_factory=list)

    def add(self, name: str, fn: Callable, *, extension: str = "") -> None:
        if name not in self.callbacks:
            raise ValueError(f"unknown callback {name!r}; expected one of {list(CALLBACK_NAMES)}")
        self.callbacks[name].append(Callback(name, fn, extension))

    def of(self, name: str) -> list[Callback]:
        return list(self.callbacks[name])

    def call(self, name: str, *args: Any, warnings: list[str] | None = None) -> list[Any]:
        """Run every `name` callback; return their results (None for one that failed)."""
        results = []
        for callback in self.of(name):
            results.append(guarded(callback.fn, *args, where=f"{callback.extension or 'builtin'}"
                                   f" {name} callback", warnings=warnings, errors=self.errors))
        return results


def guarded(fn: Callable, *args: Any, where: str, warnings: list[str] | None,
            errors: list[str] | None = None) -> Any:
    """Call fn; an exception is logged and reported once per `where`, never raised."""
    try:
        return fn(*args)
    except Exception as error:  # an extension's bug must not take the job down
        message = f"{where} failed: {type(error).__name__}: {error}"
        log.error("%s\n%s", message, traceback.format_exc())
        for sink in (warnings, errors):
            if sink is not None and message not in sink:
                sink.append(message)
        return None
