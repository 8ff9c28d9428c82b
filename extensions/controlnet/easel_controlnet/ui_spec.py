"""The ControlNet units' UI without a UI library: widget values <-> unit dicts.

The web UI (`easel_controlnet/ui.py`, Gradio, built only by `webui/`) shows one tab per
unit with sd-webui-controlnet's controls. Everything it computes lives here, so it is
tested without a browser:

- `unit_dict(values)`: the widgets' values -> the unit dict the API takes
  (`alwayson_scripts.controlnet`), parsed by the same `ControlNetUnit.parse_arg`;
- `check_units(units, is_img2img=...)`: what the UI refuses before queueing (an enabled
  unit without a model, or without a picture in txt2img), naming the unit and field;
- `sliders_for(module, pixel_perfect)`: which of Preprocessor resolution / threshold A /
  threshold B show for a preprocessor, with its labels and ranges (`api.module_detail`);
- `type_choices(...)`: the Control Type filter (`control_types.control_types`);
- `unit_from_infotext(text)`: a `ControlNet <i>` infotext value back to a unit dict.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Any

from PIL import Image

from easel_controlnet.control_types import control_types
from easel_controlnet.preprocessors import all_preprocessors, canonical_module, ui_label
from easel_controlnet.units import CONTROL_MODES, RESIZE_MODES, ControlNetUnit

# The widgets of one unit, in the order the UI builds and passes them.
WIDGETS = ("enabled", "image", "pixel_perfect", "module", "model", "weight",
           "guidance_start", "guidance_end", "processor_res", "threshold_a", "threshold_b",
           "control_mode", "resize_mode")
NO_MODEL = "None"
RESOLUTION = {"label": "Preprocessor Resolution", "value": 512, "min": 64, "max": 2048}


@dataclass(frozen=True)
class SliderSpec:
    """One preprocessor slider as shown: visible, label, default, range."""

    visible: bool
    label: str = ""
    value: float = -1
    minimum: float = 0
    maximum: float = 1


def sliders_for(module: str, *, pixel_perfect: bool = False
                ) -> tuple[SliderSpec, SliderSpec, SliderSpec]:
    """(resolution, threshold A, threshold B) for `module`; the resolution hides with
    pixel perfect (computed from the generation size, as the extension does)."""
    entry = all_preprocessors().get(canonical_module(module or "none"))
    if entry is None:
        return SliderSpec(False), SliderSpec(False), SliderSpec(False)
    resolution = SliderSpec(entry.uses_resolution and not pixel_perfect, RESOLUTION["label"],
                            RESOLUTION["value"], RESOLUTION["min"], RESOLUTION["max"])
    thresholds = tuple(
        SliderSpec(True, s.label, s.default, s.minimum, s.maximum) if s is not None
        else SliderSpec(False) for s in (entry.slider_a, entry.slider_b))
    return resolution, thresholds[0], thresholds[1]


def encode_picture(picture: Any) -> str | None:
    """A PIL picture (or an (H, W, C) array) as base64 PNG; None stays None."""
    if picture is None:
        return None
    if not isinstance(picture, Image.Image):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit_dict(values: dict[str, Any]) -> dict[str, Any]:
    """The unit dict of one tab's widget values (names: `WIDGETS`). Sliders the module
    does not show are sent as -1 (the preprocessor's default), as the extension does."""
    module = canonical_module(values.get("module") or "none")
    pixel_perfect = bool(values.get("pixel_perfect"))
    shown = sliders_for(module, pixel_perfect=pixel_perfect)
    unit: dict[str, Any] = {
        "enabled": bool(values.get("enabled")), "module": module,
        "model": values.get("model") or NO_MODEL, "image": encode_picture(values.get("image")),
        "pixel_perfect": pixel_perfect, "control_mode": values.get("control_mode"),
        "resize_mode": values.get("resize_mode")}
    for name in ("weight", "guidance_start", "guidance_end"):
        unit[name] = values.get(name)
    for name, spec in zip(("processor_res", "threshold_a", "threshold_b"), shown):
        value = values.get(name)
        unit[name] = (int(value) if name == "processor_res" else value) \
            if spec.visible and value is not None else -1
    return unit


def check_units(units: dict[str, Any], *, is_img2img: bool) -> None:
    """ValueError naming the unit for what the backend would only skip with a warning:
    an enabled unit without a model, or (txt2img) without a picture."""
    for index, value in enumerate(units.values()):
        label = f"ControlNet Unit {index}"
        try:
            unit = ControlNetUnit.parse_arg(value)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from None
        if not unit.enabled:
            continue
        if unit.model in ("", NO_MODEL):
            raise ValueError(f"{label}: Model: choose a model for the enabled unit "
                             f"(or untick Enable)")
        if unit.image is None and not is_img2img:
            raise ValueError(f"{label}: Image: an enabled unit needs a picture")


def type_choices(control_type: str, modules: list[str], models: list[str]
                 ) -> dict[str, Any]:
    """The Control Type's preprocessors and models with their defaults (the API's
    `/controlnet/control_types` entry); an unknown type lists everything."""
    types = control_types(modules, {m: ui_label(m) for m in modules}, models)
    return types.get(control_type) or types["All"]


def control_type_names(modules: list[str], models: list[str]) -> list[str]:
    return list(control_types(modules, {m: ui_label(m) for m in modules}, models))


# Infotext keys -> unit fields and how their text converts (ours and the extension's).
_INFOTEXT = {"module": str, "model": str, "weight": float, "resize_mode": str,
             "processor_res": int, "threshold_a": float, "threshold_b": float,
             "guidance_start": float, "guidance_end": float, "pixel_perfect": "bool",
             "control_mode": str, "low_vram": "bool"}


def _convert(kind: Any, text: str) -> Any:
    if kind == "bool":
        if text not in ("True", "False"):
            raise ValueError(text)
        return text == "True"
    if kind is int:
        return int(float(text))
    return kind(text)


def unit_from_infotext(text: str) -> dict[str, Any] | None:
    """An enabled unit dict from a `ControlNet <i>` value ("Module: canny, Model: ...");
    keys it does not know, or values that do not convert, are left out (defaults).
    None when the text names no module or model."""
    values: dict[str, Any] = {}
    for part in text.strip().strip('"').split(", "):
        key, sep, value = part.partition(": ")
        field = key.strip().lower().replace(" ", "_")
        if not sep or field not in _INFOTEXT:
            continue
        try:
            values[field] = _convert(_INFOTEXT[field], value.strip())
        except ValueError:
            continue
    if "module" not in values and "model" not in values:
        return None
    if values.get("resize_mode") not in (*RESIZE_MODES, None):
        values.pop("resize_mode")
    if values.get("control_mode") not in (*CONTROL_MODES, None):
        values.pop("control_mode")
    return {"enabled": True, **values}
