"""Between txt2img widgets and `Txt2ImgParams`: field names, labels, and pasting infotext.

Widgets are addressed by the API field name they feed (`steps`, `cfg_scale` ...), so
the generate handler, "paste" (↙️) and PNG Info's "Send to txt2img" all speak the same
names as `/sdapi/v1/txt2img`. Nothing here generates anything: it only converts.
"""

from __future__ import annotations

from typing import Any, Mapping

from modules.infotext import (SETTINGS_FIELDS, infotext_to_request_fields,
                              infotext_to_settings_overrides, parse_infotext)
from modules.params import Txt2ImgParams
from modules.settings import Settings

# Widget label for each request field, used to name a field in error messages.
FIELD_LABELS: dict[str, str] = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler_name": "Sampling method",
    "scheduler": "Schedule type", "steps": "Sampling steps", "width": "Width",
    "height": "Height", "n_iter": "Batch count", "batch_size": "Batch size",
    "cfg_scale": "CFG Scale", "seed": "Seed", "seed_extras": "Extra",
    "subseed": "Variation seed", "subseed_strength": "Variation strength",
    "seed_resize_from_w": "Resize seed from width", "seed_resize_from_h": "Resize seed from height",
    "override_settings": "Override settings",
}
FIELDS: tuple[str, ...] = tuple(FIELD_LABELS)
INT_FIELDS = ("steps", "width", "height", "n_iter", "batch_size", "seed", "subseed",
              "seed_resize_from_w", "seed_resize_from_h")

# Infotext keys shown as "Key: value" entries of the "Override settings" dropdown.
OVERRIDE_SEPARATOR = ": "


def label_for(field_name: str) -> str:
    return FIELD_LABELS.get(field_name, field_name)


def _as_int(name: str, value: Any) -> Any:
    """Gradio numbers arrive as floats; whole ones become ints, others stay for validate()."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def params_from_fields(values: Mapping[str, Any]) -> Txt2ImgParams:
    """A request from widget values (by field name); validation is the caller's next step."""
    v = {name: _as_int(name, values[name]) if name in INT_FIELDS else values[name]
         for name in FIELDS if name in values}
    extras = bool(v.get("seed_extras"))
    return Txt2ImgParams(
        prompt=v.get("prompt") or "", negative_prompt=v.get("negative_prompt") or "",
        sampler_name=v.get("sampler_name", "DPM++ 2M"),
        scheduler=v.get("scheduler", "Automatic"), steps=v.get("steps", 20),
        width=v.get("width", 512), height=v.get("height", 512), n_iter=v.get("n_iter", 1),
        batch_size=v.get("batch_size", 1), cfg_scale=v.get("cfg_scale", 7.0),
        seed=v.get("seed", -1),
        subseed=v.get("subseed", -1) if extras else -1,
        subseed_strength=v.get("subseed_strength", 0.0) if extras else 0.0,
        seed_resize_from_w=v.get("seed_resize_from_w", 0) if extras else 0,
        seed_resize_from_h=v.get("seed_resize_from_h", 0) if extras else 0,
        override_settings=overrides_from_entries(v.get("override_settings") or []),
    )


def overrides_from_entries(entries: list[str]) -> dict[str, Any]:
    """`["Clip skip: 2"]` -> `{"CLIP_stop_at_last_layers": 2}` (known settings only)."""
    parsed = {}
    for entry in entries:
        key, sep, value = entry.partition(OVERRIDE_SEPARATOR)
        if sep:
            parsed[key] = value
    overrides = infotext_to_settings_overrides(parsed)
    return {name: value for name, value in overrides.items() if name in Settings.names()}


def override_entries(parsed: Mapping[str, Any], current: Settings,
                     current_model_hash: str | None) -> list[str]:
    """The infotext's settings that differ from the current ones, as "Key: value" entries."""
    differing = infotext_to_settings_overrides(parsed, current.to_dict())
    entries = []
    for key, name, _ in SETTINGS_FIELDS:
        if key not in parsed or name not in differing or name not in Settings.names():
            continue
        if name == "sd_model_checkpoint" and parsed.get(key) == current_model_hash:
            continue
        entries.append(f"{key}{OVERRIDE_SEPARATOR}{parsed[key]}")
    return entries


def fields_from_infotext(text: str, current: Settings,
                         current_model_hash: str | None = None) -> dict[str, Any]:
    """Widget values (by field name) that pasting `text` sets; absent keys stay as they are."""
    parsed = parse_infotext(text)
    request = infotext_to_request_fields(parsed)
    values = {name: request[name] for name in FIELDS if name in request}
    if "Seed" in parsed or "Prompt" in parsed:
        values["prompt"] = request.get("prompt", "")
        values["negative_prompt"] = request.get("negative_prompt", "")
    has_variation = request.get("subseed_strength", 0) > 0
    has_resize = request.get("seed_resize_from_w", 0) > 0 and request.get("seed_resize_from_h", 0) > 0
    values["seed_extras"] = bool(has_variation or has_resize)
    values["override_settings"] = override_entries(parsed, current, current_model_hash)
    return values
