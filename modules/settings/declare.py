"""How a setting is declared: `opt(...)` with its metadata, the section names, the errors."""

from __future__ import annotations

from dataclasses import field
from typing import Any


class SettingsError(ValueError):
    """A setting name or value that cannot be accepted; the message names the field."""


class SettingsForbidden(PermissionError):
    """A guarded setting a client may not change (HTTP 403); the message names it."""


# `guard` values: the settings a client may not change (see `ClientAccess`).
FOLDER = "folder"  # a folder files are written to or read from
POLICY = "policy"  # what the server may reach on a client's behalf


def opt(default: Any, label: str, section: str, *, infotext: str | None = None,
        choices: tuple | None = None, minimum: float | None = None,
        maximum: float | None = None, restart: bool = False, guard: str | None = None) -> Any:
    """Declare one setting with its UI metadata (`guard`: FOLDER / POLICY, or None)."""
    meta = {"label": label, "section": section, "infotext": infotext, "choices": choices,
            "minimum": minimum, "maximum": maximum, "restart": restart, "guard": guard}
    return field(default=default, metadata=meta)


SAVING = "Saving images/grids"
PATHS = "Paths for saving"
SD = "Stable Diffusion"
SDXL = "Stable Diffusion XL"
SAMPLER = "Sampler parameters"
COMPAT = "Compatibility"
INFOTEXT = "Infotext"
PREVIEWS = "Live previews"
API = "API"
IMG2IMG = "img2img"
VAE = "VAE"
UPSCALING = "Upscaling"
EXTENSIONS = "Extensions"
OPTIMIZATIONS = "Optimizations"
INTERROGATE = "Interrogate"
FACE_RESTORATION = "Face restoration"
