"""Pasted infotext -> API request fields and settings overrides.

`modules.infotext.parse_infotext` reads the "parameters" text into A1111's keys;
this module maps those keys onto the txt2img/img2img request fields
(`infotext_to_request_fields`) and onto settings (`infotext_to_settings_overrides`),
with the types the API expects, as A1111's paste button does
(docs/a1111-semantics.md, "Infotext").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any


def to_bool(value: Any) -> bool:
    """Infotext booleans are the strings "True"/"False"."""
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


# Infotext key -> txt2img/img2img request field, with the type the API expects.
# Note the upstream quirk: "Seed resize from-1" is the width but feeds seed_resize_from_h.
REQUEST_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Prompt", "prompt", str), ("Negative prompt", "negative_prompt", str),
    ("Steps", "steps", int), ("Sampler", "sampler_name", str),
    ("Schedule type", "scheduler", str), ("CFG scale", "cfg_scale", float),
    ("Image CFG scale", "image_cfg_scale", float), ("Seed", "seed", int),
    ("Size-1", "width", int), ("Size-2", "height", int), ("Batch size", "batch_size", int),
    ("Variation seed", "subseed", int), ("Variation seed strength", "subseed_strength", float),
    ("Seed resize from-1", "seed_resize_from_h", int),
    ("Seed resize from-2", "seed_resize_from_w", int),
    ("Denoising strength", "denoising_strength", float), ("Hires upscale", "hr_scale", float),
    ("Hires upscaler", "hr_upscaler", str), ("Hires steps", "hr_second_pass_steps", int),
    ("Hires resize-1", "hr_resize_x", int), ("Hires resize-2", "hr_resize_y", int),
    ("Hires checkpoint", "hr_checkpoint_name", str), ("Hires sampler", "hr_sampler_name", str),
    ("Hires schedule type", "hr_scheduler", str), ("Hires prompt", "hr_prompt", str),
    ("Hires negative prompt", "hr_negative_prompt", str),
    ("Refiner", "refiner_checkpoint", str), ("Refiner switch at", "refiner_switch_at", float),
    ("Mask blur", "mask_blur", int), ("Masked area padding", "inpaint_full_res_padding", int),
    ("Distilled CFG Scale", "distilled_cfg_scale", float),
    ("Hires Distilled CFG Scale", "hr_distilled_cfg", float),
    ("Tiling", "tiling", to_bool),  # A1111 1.10's request field, not a setting
)

def _convert_fields(parsed: Mapping[str, Any],
                    table: Iterable[tuple[str, str, Callable[[Any], Any]]]) -> dict[str, Any]:
    """Typed values for each infotext key present; a value that fails to convert is left out."""
    converted: dict[str, Any] = {}
    for key, name, convert in table:
        if key in parsed:
            try:
                converted[name] = convert(parsed[key])
            except (TypeError, ValueError):
                continue
    return converted


# Scheduler labels that old infotexts fold into the sampler name ("DPM++ 2M Karras").
SCHEDULER_LABELS: tuple[str, ...] = (
    "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "KL Optimal",
    "Align Your Steps", "Simple", "Normal", "DDIM", "Beta",
)


def split_legacy_sampler(sampler: str, scheduler: str) -> tuple[str, str]:
    """``("DPM++ 2M Karras", x)`` -> ``("DPM++ 2M", "Karras")``; other names unchanged."""
    for label in SCHEDULER_LABELS:
        if sampler.endswith(" " + label):
            return sampler[: -len(label) - 1], label
    return sampler, scheduler


def infotext_to_request_fields(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """API request fields for a parsed infotext, as A1111's paste does.

    Values that do not convert to the field's type are left out (pasting a malformed
    infotext keeps the current value, as upstream). ``enable_hr`` is inferred like
    upstream, on the parsed dict *with* defaults: since "Hires resize-1" is always
    filled in, any infotext with "Denoising strength" turns it on.
    """
    fields = _convert_fields(parsed, REQUEST_FIELDS)
    if "sampler_name" in fields:
        fields["sampler_name"], fields["scheduler"] = split_legacy_sampler(
            fields["sampler_name"], fields.get("scheduler", "Automatic"))
    fields["enable_hr"] = "Denoising strength" in parsed and any(
        key in parsed for key in ("Hires upscale", "Hires upscaler", "Hires resize-1"))
    return fields


# Infotext key -> setting name (options declared with an infotext label upstream).
SETTINGS_FIELDS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("Clip skip", "CLIP_stop_at_last_layers", int), ("Model hash", "sd_model_checkpoint", str),
    ("VAE", "sd_vae", str), ("RNG", "randn_source", str),
    ("ENSD", "eta_noise_seed_delta", int), ("Emphasis", "emphasis", str),
    ("Eta", "eta_ancestral", float), ("Eta DDIM", "eta_ddim", float),
    ("Noise multiplier", "initial_noise_multiplier", float),
    ("Conditional mask weight", "inpainting_mask_weight", float),
    ("NGMS", "s_min_uncond", float), ("NGMS all steps", "s_min_uncond_all", to_bool),
    ("Token merging ratio", "token_merging_ratio", float),
    ("Token merging ratio hr", "token_merging_ratio_hr", float),
    ("Schedule min sigma", "sigma_min", float), ("Schedule max sigma", "sigma_max", float),
    ("Schedule rho", "rho", float), ("Sigma churn", "s_churn", float),
    ("Sigma tmin", "s_tmin", float), ("Sigma tmax", "s_tmax", float),
    ("Sigma noise", "s_noise", float),
    ("Discard penultimate sigma", "always_discard_next_to_last_sigma", to_bool),
    ("SGM noise multiplier", "sgm_noise_multiplier", to_bool),
    ("UniPC variant", "uni_pc_variant", str), ("UniPC skip type", "uni_pc_skip_type", str),
    ("UniPC order", "uni_pc_order", int),
    ("UniPC lower order final", "uni_pc_lower_order_final", to_bool),
    ("Pad conds", "pad_cond_uncond", to_bool), ("Pad conds v0", "pad_cond_uncond_v0", to_bool),
    ("Face restoration", "face_restoration_model", str),
    ("Skip Early CFG", "skip_early_cond", float), ("Noise Schedule", "sd_noise_schedule", str),
    ("VAE Encoder", "sd_vae_encode_method", str), ("VAE Decoder", "sd_vae_decode_method", str),
    ("Old prompt editing timelines", "use_old_scheduling", to_bool),
    ("Downcast alphas_cumprod", "use_downcasted_alpha_bar", to_bool),
    ("Refiner switch by sampling steps", "refiner_switch_by_sample_steps", to_bool),
    ("Hires refiner", "hires_fix_refiner_pass", str),
    ("Beta schedule alpha", "beta_dist_alpha", float),
    ("Beta schedule beta", "beta_dist_beta", float),
    ("FP8 weight", "fp8_storage", str),
    ("Cache FP16 weight for LoRA", "cache_fp16_weight", to_bool),
    ("Hypertile U-Net", "hypertile_enable_unet", to_bool),
    ("Hypertile U-Net second pass", "hypertile_enable_unet_secondpass", to_bool),
    ("Hypertile U-Net max depth", "hypertile_max_depth_unet", int),
    ("Hypertile U-Net max tile size", "hypertile_max_tile_unet", int),
    ("Hypertile U-Net swap size", "hypertile_swap_size_unet", int),
    ("Hypertile VAE", "hypertile_enable_vae", to_bool),
    ("Hypertile VAE max depth", "hypertile_max_depth_vae", int),
    ("Hypertile VAE max tile size", "hypertile_max_tile_vae", int),
    ("Hypertile VAE swap size", "hypertile_swap_size_vae", int),
)


def _modules(parsed: Mapping[str, Any]) -> tuple[str, ...]:
    """Forge's `Module 1: ae, Module 2: clip_l, ...` as the forge_additional_modules names."""
    numbered = {}
    for key, value in parsed.items():
        head, _, number = str(key).partition(" ")
        if head == "Module" and number.isdigit():
            numbered[int(number)] = str(value)
    return tuple(numbered[n] for n in sorted(numbered))


def infotext_to_settings_overrides(parsed: Mapping[str, Any],
                                   current: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Settings the infotext implies, e.g. ``{"CLIP_stop_at_last_layers": 2}``.

    With ``current`` settings given, only values that differ are returned (A1111's
    ``get_override_settings``). ``Model hash`` is passed through as the hash; turning it
    into a checkpoint title is the model registry's job.
    """
    overrides = _convert_fields(parsed, SETTINGS_FIELDS)
    modules = _modules(parsed)
    if modules:
        overrides["forge_additional_modules"] = modules
    if current is None:
        return overrides
    return {name: value for name, value in overrides.items()
            if name not in current or current[name] != value}


def _strict_bool(value: Any) -> bool:
    """"True"/"False" (any case) or a bool; anything else does not convert."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(f"not a boolean: {value!r}")
    return text == "true"


def _whole(value: Any) -> int:
    """An int from "3" or "3.0"; "3.5" does not convert (the field is an integer)."""
    number = float(value)
    if not number.is_integer():
        raise ValueError(f"not a whole number: {value!r}")
    return int(number)


# An always-on script's `Args` kind -> how its infotext value converts.
ALWAYSON_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "bool": _strict_bool, "int": _whole, "float": float, "str": str,
}


def _fits(spec, value: Any) -> bool:
    """The value is one the script's `Args` accepts (declared choices and range)."""
    if spec.choices and value not in spec.choices:
        return False
    if spec.minimum is not None and value < spec.minimum:
        return False
    return spec.maximum is None or value <= spec.maximum


def _script_keys(script) -> dict[str, str]:
    """A script's `infotext_fields()`; a broken one (an extension's) counts as none."""
    try:
        return dict(script.infotext_fields() or {})
    except Exception:  # noqa: BLE001 - an extension's bug must not break pasting
        return {}


def infotext_to_alwayson(parsed: Mapping[str, Any], scripts) -> dict[str, dict]:
    """`{title: {"args": {field: value}}}` for each always-on script of `scripts` that has
    at least one of its infotext keys (`Script.infotext_fields`) in `parsed`.

    Values get the `Args` field's declared type (bool/int/float/str); one that does not
    convert, or falls outside the field's choices or range, is left out, as the other
    pasted fields, so the request (or widget) keeps its current value.
    """
    from modules.scripts.args import arg_specs

    found: dict[str, dict] = {}
    for script in scripts:
        keys = _script_keys(script)
        if not any(key in parsed for key in keys.values()):
            continue
        specs = {spec.name: spec for spec in arg_specs(script.Args)}
        args: dict[str, Any] = {}
        for name, key in keys.items():
            spec = specs.get(name)
            convert = ALWAYSON_CONVERTERS.get(spec.kind) if spec is not None else None
            if key not in parsed or convert is None:
                continue
            try:
                value = convert(parsed[key])
            except (TypeError, ValueError):
                continue
            if _fits(spec, value):
                args[name] = value
        found[script.title()] = {"args": args}
    return found
