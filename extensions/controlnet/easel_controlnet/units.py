"""ControlNet units: the per-unit arguments of the popular ControlNet extension's API.

Clients send `alwayson_scripts: {"controlnet": {"args": [unit, unit, ...]}}`, each unit
a dict with the field names of sd-webui-controlnet's `ControlNetUnit` (docs/a1111-semantics.md,
"ControlNet API"): enabled, module, model, weight, image (base64, or {image, mask}), resize_mode,
low_vram, processor_res, threshold_a, threshold_b, guidance_start, guidance_end,
control_mode, pixel_perfect. Missing fields take the extension's defaults; a bad value
raises `ValueError` naming the field (the scripts layer adds the unit's name), so API
clients get a 422 before the job is queued. Enum fields accept the labels or their
integer indices (0, 1, 2), as the extension does.

A unit dict that omits `enabled` is enabled (the extension's API examples rely on
that); a unit that is not sent at all is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from easel_controlnet.preprocessors import canonical_module, preprocessor_names

RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Scale to Fit (Inner Fit)": "Crop and Resize",
                  "Envelope (Outer Fit)": "Resize and Fill", "Inner Fit": "Crop and Resize",
                  "Outer Fit": "Resize and Fill"}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
# Fields of newer extension versions that clients may send; accepted and not used.
IGNORED_FIELDS = frozenset({
    "inpaint_crop_input_image", "hr_option", "save_detected_map", "advanced_weighting",
    "effective_region_mask", "pulid_mode", "union_control_type", "ipadapter_input",
    "batch_images", "input_mode", "output_dir", "loopback", "batch_mask_dir",
    "animatediff_batch", "batch_modifiers", "batch_image_files", "batch_keyframe_idx",
    "is_ui", "guessmode", "use_preview_as_input", "generated_image", "mask_image",
})
LEGACY_NAMES = {"input_image": "image", "lowvram": "low_vram"}


@dataclass(frozen=True)
class ControlNetUnit:
    """One unit's settings (validated); `image`/`mask` stay base64 text until used."""

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: str | None = None
    mask: str | None = None
    resize_mode: str = "Crop and Resize"
    low_vram: bool = False
    processor_res: int = -1
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: str = "Balanced"

    @classmethod
    def parse_arg(cls, value: Any) -> "ControlNetUnit":
        """A unit from an API value: None (disabled), a dict, or a unit."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"a ControlNet unit must be an object, got {value!r}")
        return parse_unit(value, modules=preprocessor_names())

    @property
    def active(self) -> bool:
        """Enabled, with a model, and a weight that changes something."""
        return self.enabled and self.model not in ("", "None") and self.weight != 0

    def infotext(self) -> str:
        """The value of the `ControlNet <i>` infotext key."""
        return ", ".join([
            f"Module: {self.module}", f"Model: {self.model}", f"Weight: {self.weight}",
            f"Resize Mode: {self.resize_mode}", f"Processor Res: {self.processor_res}",
            f"Threshold A: {self.threshold_a}", f"Threshold B: {self.threshold_b}",
            f"Guidance Start: {self.guidance_start}", f"Guidance End: {self.guidance_end}",
            f"Pixel Perfect: {self.pixel_perfect}", f"Control Mode: {self.control_mode}"])


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name}: expected true or false, got {value!r}")


def _number(name: str, value: Any, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}: {value} is outside [{low}, {high}]")
    return float(value)


def _choice(name: str, value: Any, choices: tuple[str, ...], aliases=None) -> str:
    """A label, an alias of one, or its index."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return choices[value]
    if isinstance(value, str):
        value = (aliases or {}).get(value, value)
        if value in choices:
            return value
    raise ValueError(f"{name}: {value!r} is not one of {list(choices)} (or 0..{len(choices) - 1})")


def _image(name: str, value: Any) -> tuple[str | None, str | None]:
    """(image, mask) from None, base64 text, or {"image": ..., "mask": ...}."""
    if value is None or value == "":
        return None, None
    if isinstance(value, str):
        return value, None
    if isinstance(value, dict) and isinstance(value.get("image"), str):
        mask = value.get("mask")
        if mask is not None and not isinstance(mask, str):
            raise ValueError(f"{name}.mask: expected base64 text, got {type(mask).__name__}")
        return value["image"], mask or None
    if isinstance(value, list):
        raise ValueError(f"{name}: lists of images (batch input) are not supported")
    raise ValueError(f"{name}: expected base64 text or {{image, mask}}, got {value!r}")


def _processor_res(value: Any) -> int:
    number = _number("processor_res", value)
    if number != int(number) or (number != -1 and not 64 <= number <= 4096):
        raise ValueError(f"processor_res: expected -1 or an integer in [64, 4096], got {value!r}")
    return int(number)


def parse_unit(payload: dict[str, Any], *, modules: tuple[str, ...] | None = None
               ) -> ControlNetUnit:
    """Validate one unit dict (see the module docstring); `modules` limits `module`."""
    known = {spec.name for spec in fields(ControlNetUnit)}
    data = {LEGACY_NAMES.get(key, key): value for key, value in payload.items()}
    unknown = sorted(set(data) - known - IGNORED_FIELDS)
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown ControlNet unit field")
    unit = ControlNetUnit(enabled=True)
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key in IGNORED_FIELDS:
            continue
        if key in ("enabled", "low_vram", "pixel_perfect"):
            values[key] = _bool(key, value)
        elif key in ("module", "model"):
            if not isinstance(value, str):
                raise ValueError(f"{key}: expected a string, got {value!r}")
            values[key] = canonical_module(value) if key == "module" else value
        elif key == "weight":
            values[key] = _number(key, value, 0.0, 2.0)
        elif key in ("guidance_start", "guidance_end"):
            values[key] = _number(key, value, 0.0, 1.0)
        elif key in ("threshold_a", "threshold_b"):
            values[key] = _number(key, value)
        elif key == "processor_res":
            values[key] = _processor_res(value)
        elif key == "resize_mode":
            values[key] = _choice(key, value, RESIZE_MODES, RESIZE_ALIASES)
        elif key == "control_mode":
            values[key] = _choice(key, value, CONTROL_MODES)
        elif key == "image":
            image, mask = _image(key, value)
            values["image"] = image
            if mask is not None:
                values.setdefault("mask", mask)
        elif key == "mask":
            values[key] = _image(key, value)[0]
    unit = replace(unit, **values)
    if unit.guidance_start > unit.guidance_end:
        raise ValueError(f"guidance_end: {unit.guidance_end} is before guidance_start "
                         f"{unit.guidance_start}")
    if modules is not None and unit.module not in modules:
        raise ValueError(f"module: unknown preprocessor {unit.module!r}")
    return unit
