"""Typed generation requests and results, with A1111's field names.

The web UI and the HTTP API both build a `Txt2ImgParams`; `processing.txt2img` reads
nothing else. `validate()` checks every field a user or client can send and raises a
`ParamsError` naming the field and the reason; nothing is silently clamped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SIDE = 8192
MAX_STEPS = 1000
MAX_BATCH = 64


class ParamsError(ValueError):
    """A request field that cannot be accepted."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


@dataclass(kw_only=True)
class Txt2ImgParams:
    """One txt2img request (A1111's `StableDiffusionProcessingTxt2Img` fields)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    tiling: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False

    def validate(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            _require_int(name, value, 64, MAX_SIDE)
            if value % 8:
                raise ParamsError(name, f"{value} is not a multiple of 8")
        _require_int("steps", self.steps, 1, MAX_STEPS)
        _require_int("batch_size", self.batch_size, 1, MAX_BATCH)
        _require_int("n_iter", self.n_iter, 1, 10_000)
        _require_number("cfg_scale", self.cfg_scale, 0.0, 100.0)
        _require_number("subseed_strength", self.subseed_strength, 0.0, 1.0)
        _require_int("seed", self.seed, -1, 2**63 - 1)
        _require_int("subseed", self.subseed, -1, 2**63 - 1)
        for name in ("seed_resize_from_h", "seed_resize_from_w"):
            _require_int(name, getattr(self, name), -1, MAX_SIDE)
        if not isinstance(self.prompt, str):
            raise ParamsError("prompt", "must be a string")
        if not isinstance(self.negative_prompt, str):
            raise ParamsError("negative_prompt", "must be a string")
        for name in ("eta", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise"):
            value = getattr(self, name)
            if value is not None:
                _require_number(name, value, 0.0, 1000.0)


def _require_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(name, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ParamsError(name, f"{value} is outside [{low}, {high}]")


def _require_number(name: str, value: Any, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(name, f"expected a number, got {value!r}")
    if not low <= value <= high:
        raise ParamsError(name, f"{value} is outside [{low}, {high}]")


@dataclass(kw_only=True)
class GenerationResult:
    """What a finished job returns: images, their infotexts and where they were saved."""

    images: list[Any]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    saved_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
