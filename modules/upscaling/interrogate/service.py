"""The interrogators of one runtime: loaded once, run one at a time, A1111's settings.

`interrogators_of(runtime)` gives the runtime's `Interrogators` (made on first use and
kept on the runtime, so the API, the UI buttons and the Loopback script share the loaded
models). `interrogate(image, model, settings)` answers the caption text for `model`
"clip" or "deepdanbooru" ("deepbooru" is accepted too, the UI's name).

Models are loaded on first use and stay in RAM; between uses they wait on the CPU unless
`interrogate_keep_models_in_memory` keeps them on the device (A1111's meaning). A lock
runs one interrogation at a time: each moves models between devices, and a GPU holds
one such job's tensors comfortably where several might not.

Settings: A1111's names and defaults, declared in `modules/settings/tools.py` (so
`/options`, `override_settings` and the Settings tab set them); `DEFAULTS` repeats the
defaults for callers without a settings object.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image

from modules import devices
from modules.models.interrogate_files import (
    BLIP_FOLDERS,
    CLIP_FOLDERS,
    InterrogatorMissing,
    find_deepbooru,
    find_transformers_folder,
    load_blip,
    load_clip,
    load_deepbooru,
)
from modules.upscaling.interrogate import clip_interrogator, tagger

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "interrogate_keep_models_in_memory": False,
    "interrogate_return_ranks": False,
    "interrogate_clip_num_beams": 1,
    "interrogate_clip_min_length": 24,
    "interrogate_clip_max_length": 48,
    "interrogate_clip_dict_limit": 1500,
    "interrogate_clip_skip_categories": (),
    "interrogate_deepbooru_score_threshold": 0.5,
    "deepbooru_sort_alpha": True,
    "deepbooru_use_spaces": True,
    "deepbooru_escape": True,
    "deepbooru_filter_tags": "",
}
MODELS = {"clip": "clip", "deepdanbooru": "deepbooru", "deepbooru": "deepbooru"}


class UnknownInterrogator(LookupError):
    """A model name other than "clip" / "deepdanbooru" (A1111: 404 "Model not found")."""


def interrogate_settings(settings: Any, overrides: Mapping[str, Any] | None = None
                         ) -> dict[str, Any]:
    """A1111's interrogate settings: the settings object's value where it has the field,
    else the default; `overrides` (tests, callers with their own values) win."""
    values = {name: getattr(settings, name, default) for name, default in DEFAULTS.items()}
    values.update(overrides or {})
    return values


def kind_of(model: str) -> str:
    """"clip" or "deepbooru" for a request's model name; `UnknownInterrogator` otherwise."""
    kind = MODELS.get(str(model).strip().lower())
    if kind is None:
        raise UnknownInterrogator("Model not found")
    return kind


class Interrogators:
    """Loaded BLIP + CLIP and DeepBooru models over one models folder."""

    def __init__(self, models_dir, device: torch.device | str = "cpu") -> None:
        self.models_dir = models_dir
        self.device = torch.device(device)
        self.lock = threading.Lock()
        self.loaded: dict[str, Any] = {}

    def check(self, model: str) -> None:
        """Raise `InterrogatorMissing` / `UnknownInterrogator` before any heavy work:
        a cheap look at the folders (a damaged file shows only when it is loaded)."""
        if kind_of(model) == "clip":
            find_transformers_folder(self.models_dir, BLIP_FOLDERS, "blip", "BLIP")
            find_transformers_folder(self.models_dir, CLIP_FOLDERS, "clip", "CLIP")
        else:
            find_deepbooru(self.models_dir)

    def interrogate(self, image: Image.Image, model: str, settings: Mapping[str, Any]) -> str:
        """The caption text of `image` by `model` (see the module docstring)."""
        kind = kind_of(model)
        with self.lock:
            parts = self._parts(kind)
            try:
                if kind == "clip":
                    blip, clip = parts
                    return clip_interrogator.interrogate(
                        blip, clip, image, settings, clip_interrogator.load_categories())
                network, tags = parts
                return tagger.tag_text(tags, tagger.probabilities(network, image), settings)
            finally:
                if not settings["interrogate_keep_models_in_memory"]:
                    self._park(kind)

    def _parts(self, kind: str):
        """The models of `kind`, loaded on first use, on the device."""
        if kind not in self.loaded:
            if kind == "clip":
                self.loaded[kind] = (load_blip(self.models_dir, torch.device("cpu")),
                                     load_clip(self.models_dir, torch.device("cpu")))
            else:
                self.loaded[kind] = load_deepbooru(self.models_dir, torch.device("cpu"))
        self._move(kind, self.device)
        return self.loaded[kind]

    def _park(self, kind: str) -> None:
        """Back to the CPU (A1111: "keep models in VRAM" off)."""
        if self.device.type != "cpu":
            self._move(kind, torch.device("cpu"))

    def _move(self, kind: str, device: torch.device) -> None:
        if kind == "clip":
            for part in self.loaded[kind]:
                part.model.to(device)
        else:
            self.loaded[kind][0].to(device)

    def unload(self) -> None:
        """Forget every loaded model (a test, or a caller freeing memory)."""
        with self.lock:
            self.loaded.clear()


_CREATE = threading.Lock()


def interrogators_of(runtime) -> Interrogators:
    """The runtime's interrogators, made on first use and kept on the runtime object."""
    found = getattr(runtime, "interrogators", None)
    if found is not None:
        return found
    with _CREATE:
        found = getattr(runtime, "interrogators", None)
        if found is None:
            found = Interrogators(runtime.paths.models_dir, _device(runtime))
            runtime.interrogators = found
    return found


def _device(runtime) -> torch.device:
    """The runtime's accelerator, or the CPU with `--use-cpu all` / `interrogate`."""
    args = getattr(runtime, "args", None)
    if {"all", "interrogate"} & set(getattr(args, "use_cpu", None) or []):
        return torch.device("cpu")
    try:
        return devices.choose_device(args)
    except Exception:  # a bare test runtime without flags: the CPU is always right
        return torch.device("cpu")


def interrogate(runtime, image: Image.Image, model: str,
                overrides: Mapping[str, Any] | None = None) -> str:
    """The one entry point: `runtime`'s interrogators with its current settings."""
    settings = interrogate_settings(runtime.settings.current, overrides)
    return interrogators_of(runtime).interrogate(image, model, settings)


__all__ = ["InterrogatorMissing", "Interrogators", "UnknownInterrogator", "interrogate",
           "interrogate_settings", "interrogators_of", "kind_of"]
