"""Between the generation widgets and the request objects: field names, labels, paste.

Widgets are addressed by the API field name they feed (`steps`, `cfg_scale` ...), so
the generate handlers, "paste" (↙️) and PNG Info's "Send to txt2img" all speak the same
names as `/sdapi/v1/txt2img` and `/sdapi/v1/img2img`. Nothing here generates anything:
it only converts widget values to a `Txt2ImgParams` (img2img: `webui.img2img_fields`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modules.infotext import parse_infotext
from modules.pipeline.infotext_fields import (
    SETTINGS_FIELDS,
    infotext_to_request_fields,
    infotext_to_settings_overrides,
)
from modules.pipeline.params import ParamsError, Txt2ImgParams
from modules.settings import Settings

# Widget label for each request field, used to name a field in error messages.
COMMON_LABELS: dict[str, str] = {
    "prompt": "Prompt", "negative_prompt": "Negative prompt", "sampler_name": "Sampling method",
    "scheduler": "Schedule type", "steps": "Sampling steps", "width": "Width",
    "height": "Height", "n_iter": "Batch count", "batch_size": "Batch size",
    "cfg_scale": "CFG Scale", "distilled_cfg_scale": "Distilled CFG Scale",
    "seed": "Seed", "seed_extras": "Extra",
    "subseed": "Variation seed", "subseed_strength": "Variation strength",
    "seed_resize_from_w": "Resize seed from width", "seed_resize_from_h": "Resize seed from height",
    "override_settings": "Override settings", "styles": "Styles",
    "refiner_enabled": "Refiner", "refiner_checkpoint": "Refiner checkpoint",
    "refiner_switch_at": "Refiner switch at", "tiling": "Tiling",
}
HIRES_LABELS: dict[str, str] = {
    "enable_hr": "Hires. fix", "hr_upscaler": "Upscaler", "hr_second_pass_steps": "Hires steps",
    "denoising_strength": "Denoising strength", "hr_scale": "Upscale by",
    "hr_resize_x": "Resize width to", "hr_resize_y": "Resize height to",
    "hr_checkpoint_name": "Hires checkpoint", "hr_sampler_name": "Hires sampling method",
    "hr_scheduler": "Hires schedule type", "hr_prompt": "Hires prompt",
    "hr_negative_prompt": "Hires negative prompt", "hr_distilled_cfg": "Hires Distilled CFG Scale",
}
FIELD_LABELS: dict[str, str] = {**COMMON_LABELS, **HIRES_LABELS}
COMMON_FIELDS: tuple[str, ...] = tuple(COMMON_LABELS)
FIELDS: tuple[str, ...] = tuple(FIELD_LABELS)  # the txt2img tab's fields, in widget order
INT_FIELDS = ("steps", "width", "height", "n_iter", "batch_size", "seed", "subseed",
              "seed_resize_from_w", "seed_resize_from_h", "hr_second_pass_steps",
              "hr_resize_x", "hr_resize_y", "mask_blur", "inpaint_full_res_padding")
# Number boxes every request reads (hidden ones, such as the variation seed, may be empty).
REQUIRED_NUMBERS = ("steps", "width", "height", "n_iter", "batch_size", "cfg_scale", "seed")

# Request fields the scripts' controls fill (`webui.script_ui`), kept by every tab.
SCRIPT_FIELDS = ("script_name", "script_args", "alwayson_scripts")

# Dropdown entries meaning "same as the first pass" (sent on as None).
SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = ("Use same checkpoint", "Use same sampler",
                                                 "Use same scheduler")
NO_REFINER = "None"
# Infotext keys shown as "Key: value" entries of the "Override settings" dropdown.
OVERRIDE_SEPARATOR = ": "


def label_for(field_name: str) -> str:
    from webui.img2img_fields import IMG2IMG_LABELS  # img2img's own labels

    return FIELD_LABELS.get(field_name) or IMG2IMG_LABELS.get(field_name, field_name)


def as_int(value: Any) -> Any:
    """Gradio numbers arrive as floats; whole ones become ints, others stay for validate()."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalized(values: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Widget values by name, whole numbers as ints; an emptied number box is an error
    naming its field (never a default picked in its place)."""
    for name in REQUIRED_NUMBERS:
        if name in names and name in values and values[name] is None:
            raise ParamsError(name, "is empty: enter a number")
    return {name: as_int(values[name]) if name in INT_FIELDS else values[name]
            for name in dict.fromkeys((*names, *SCRIPT_FIELDS)) if name in values}


def common_params(v: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments shared by `Txt2ImgParams` and `Img2ImgParams` (normalized values)."""
    extras = bool(v.get("seed_extras"))
    return dict(
        prompt=v.get("prompt") or "", negative_prompt=v.get("negative_prompt") or "",
        styles=list(v.get("styles") or []),
        sampler_name=v.get("sampler_name", "DPM++ 2M"),
        scheduler=v.get("scheduler", "Automatic"), steps=v.get("steps", 20),
        width=v.get("width", 512), height=v.get("height", 512), n_iter=v.get("n_iter", 1),
        batch_size=v.get("batch_size", 1), cfg_scale=v.get("cfg_scale", 7.0),
        distilled_cfg_scale=v.get("distilled_cfg_scale", 3.5),
        seed=v.get("seed", -1),
        subseed=v.get("subseed", -1) if extras else -1,
        subseed_strength=v.get("subseed_strength", 0.0) if extras else 0.0,
        seed_resize_from_w=v.get("seed_resize_from_w", 0) if extras else 0,
        seed_resize_from_h=v.get("seed_resize_from_h", 0) if extras else 0,
        override_settings=overrides_from_entries(v.get("override_settings") or []),
        script_name=v.get("script_name") or None, script_args=v.get("script_args") or {},
        alwayson_scripts=dict(v.get("alwayson_scripts") or {}),
        tiling=bool(v.get("tiling")),
        **refiner_params(v),
    )


def refiner_params(v: Mapping[str, Any]) -> dict[str, Any]:
    """The refiner fields, sent only while the Refiner accordion is on."""
    chosen = v.get("refiner_checkpoint")
    if not v.get("refiner_enabled") or not chosen or chosen == NO_REFINER:
        return {}
    return dict(refiner_checkpoint=chosen, refiner_switch_at=v.get("refiner_switch_at", 0.8))


def params_from_fields(values: Mapping[str, Any]) -> Txt2ImgParams:
    """A request from widget values (by field name); validation is the caller's next step."""
    v = normalized(values, FIELDS)
    return Txt2ImgParams(**common_params(v), **hires_params(v))


def hires_params(v: Mapping[str, Any]) -> dict[str, Any]:
    """The hires-fix fields; its denoising strength is only sent with Hires. fix on."""
    enabled = bool(v.get("enable_hr"))
    fields = dict(enable_hr=enabled, hr_upscaler=v.get("hr_upscaler") or "Latent",
                  hr_second_pass_steps=v.get("hr_second_pass_steps", 0),
                  hr_scale=v.get("hr_scale", 2.0), hr_resize_x=v.get("hr_resize_x", 0),
                  hr_resize_y=v.get("hr_resize_y", 0), hr_prompt=v.get("hr_prompt") or "",
                  hr_negative_prompt=v.get("hr_negative_prompt") or "",
                  hr_distilled_cfg=v.get("hr_distilled_cfg", 3.5),
                  denoising_strength=v.get("denoising_strength", 0.7) if enabled else None)
    for name, same in (("hr_checkpoint_name", SAME_CHECKPOINT),
                       ("hr_sampler_name", SAME_SAMPLER), ("hr_scheduler", SAME_SCHEDULER)):
        value = v.get(name)
        fields[name] = None if not value or value == same else value
    return fields


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


def fields_from_infotext(text: str, current: Settings, current_model_hash: str | None = None,
                         *, names: tuple[str, ...] = FIELDS) -> dict[str, Any]:
    """Widget values (by field name, among `names`) that pasting `text` sets; absent keys
    stay as they are."""
    parsed = parse_infotext(text)
    request = infotext_to_request_fields(parsed)
    values = {name: request[name] for name in names if name in request}
    if "Seed" in parsed or "Prompt" in parsed:
        values["prompt"] = request.get("prompt", "")
        values["negative_prompt"] = request.get("negative_prompt", "")
    has_variation = request.get("subseed_strength", 0) > 0
    has_resize = (request.get("seed_resize_from_w", 0) > 0
                  and request.get("seed_resize_from_h", 0) > 0)
    values["seed_extras"] = bool(has_variation or has_resize)
    if "refiner_enabled" in names:
        values["refiner_enabled"] = bool(request.get("refiner_checkpoint"))
    if "tiling" in names:  # written only when on: an image without it was made without
        values["tiling"] = bool(request.get("tiling"))
    values["override_settings"] = override_entries(parsed, current, current_model_hash)
    return values
