"""From an A1111 txt2img request to `Txt2ImgParams`, and from a result to A1111's answer.

Request rules follow a1111.md b.3.3: `infotext` fills the fields the client did not
set and adds the settings it implies to `override_settings`; the sampler is
`sampler_name or sampler_index` (legacy "DPM++ 2M Karras" names are split); styles
are merged from `styles.csv`; `save_images` decides saving. Everything is checked
before the job is queued, so a bad request fails at once with the field named.
Options whose capability Easel does not have yet (hires fix, face restoration,
tiling, refiner, scripts) are refused with a clear error, never silently ignored.
"""

from __future__ import annotations

import json
import time
from typing import Any

from modules.api.errors import ApiError, not_available
from modules.api.schemas import Txt2ImgRequest
from modules.infotext import (
    infotext_to_request_fields, infotext_to_settings_overrides, parse_infotext,
)
from modules.models.errors import ModelLoadError
from modules.params import GenerationResult, Txt2ImgParams
from modules.sampling import registry as R
from modules.settings import Settings
from modules.styles import apply_styles, load_styles

PARAM_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
                "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "eta",
                "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise")


def apply_infotext(request: Txt2ImgRequest, settings: Settings, runtime) -> Txt2ImgRequest:
    """Fill unset fields and override_settings from `request.infotext` (a1111.md b.3.3 1)."""
    if not request.infotext:
        return request
    parsed = parse_infotext(request.infotext)
    fields = {name: value for name, value in infotext_to_request_fields(parsed).items()
              if name in Txt2ImgRequest.model_fields and name not in request.model_fields_set}
    overrides = dict(request.override_settings or {})
    implied = infotext_to_settings_overrides(parsed, settings.to_dict())
    for name, value in implied.items():
        if name not in Settings.names() or name in overrides:
            continue
        if name == "sd_model_checkpoint":
            value = _checkpoint_title_or_none(runtime, str(value))
            if value is None:
                continue  # A1111 drops an unknown model hash
        overrides[name] = value
    updated = request.model_copy(update={**fields, "override_settings": overrides or None})
    return Txt2ImgRequest.model_validate(updated.model_dump(exclude_unset=False))


def _checkpoint_title_or_none(runtime, query: str) -> str | None:
    try:
        return runtime.models.find(query).title
    except ModelLoadError:
        return None


def refuse_unavailable(request: Txt2ImgRequest) -> None:
    """Scripts (none are installed) and capabilities that do not exist yet."""
    if request.script_name:
        raise ApiError(422, f"Script '{request.script_name}' not found")
    for name in request.alwayson_scripts:
        raise ApiError(422, f"always on script {name} not found")
    if request.enable_hr:
        raise not_available("Hires fix (enable_hr)")
    if request.restore_faces:
        raise not_available("Face restoration (restore_faces)")
    if request.tiling:
        raise not_available("Tiling (tiling)")
    if request.refiner_checkpoint and request.refiner_checkpoint != "None":
        raise not_available("Refiner (refiner_checkpoint)")
    if request.firstpass_image:
        raise not_available("Hires fix from a first-pass image (firstpass_image)")


def resolve_sampler_names(request: Txt2ImgRequest) -> tuple[str, str]:
    """(sampler label, scheduler label), or 400 "Sampler not found" as A1111."""
    name = request.sampler_name or request.sampler_index
    try:
        sampler, scheduler = R.resolve_sampler(name, request.scheduler)
    except ValueError as error:
        kind = "Scheduler" if "scheduler" in str(error) else "Sampler"
        raise ApiError(400, f"{kind} not found: {error}") from error
    return sampler.label, scheduler.label


def check_overrides(runtime, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate override_settings; the checkpoint must exist (404 naming it)."""
    runtime.settings.current.with_overrides(overrides)  # SettingsError names the key
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint:
        try:
            runtime.models.find(checkpoint)
        except ModelLoadError as error:
            raise ApiError(404, f"Checkpoint not found: {checkpoint!r} ({error.reason})") from error
    return overrides


def to_params(request: Txt2ImgRequest, runtime) -> Txt2ImgParams:
    """The validated pipeline request for an API body (after `apply_infotext`)."""
    refuse_unavailable(request)
    sampler, scheduler = resolve_sampler_names(request)
    styles = list(request.styles or [])
    prompt, negative = apply_styles(request.prompt, request.negative_prompt, styles,
                                    load_styles(runtime.paths.styles_file))
    overrides = check_overrides(runtime, dict(request.override_settings or {}))
    params = Txt2ImgParams(
        prompt=prompt, negative_prompt=negative, styles=styles, sampler_name=sampler,
        scheduler=scheduler, override_settings=overrides, tiling=False,
        do_not_save_samples=not request.save_images, do_not_save_grid=not request.save_images,
        **{name: getattr(request, name) for name in PARAM_FIELDS},
    )
    params.validate()
    return params


def info_dict(request: Txt2ImgRequest, params: Txt2ImgParams, result: GenerationResult,
              *, started: float | None, version: str, index_of_first_image: int,
              infotexts: list[str]) -> dict[str, Any]:
    """A1111's `Processed.js()` keys (a1111.md b.3.4)."""
    extra = result.extra
    return {
        "prompt": params.prompt, "all_prompts": result.prompts,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": result.negative_prompts,
        "seed": result.seeds[0] if result.seeds else params.seed, "all_seeds": result.seeds,
        "subseed": result.subseeds[0] if result.subseeds else params.subseed,
        "all_subseeds": result.subseeds, "subseed_strength": params.subseed_strength,
        "width": params.width, "height": params.height,
        "sampler_name": extra.get("sampler_name", params.sampler_name),
        "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
        "restore_faces": bool(request.restore_faces), "face_restoration_model": None,
        "sd_model_name": extra.get("sd_model_name"), "sd_model_hash": extra.get("sd_model_hash"),
        "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": params.seed_resize_from_w,
        "seed_resize_from_h": params.seed_resize_from_h,
        "denoising_strength": request.denoising_strength, "extra_generation_params": {},
        "index_of_first_image": index_of_first_image, "infotexts": infotexts,
        "styles": params.styles, "job_timestamp": job_timestamp(started),
        "clip_skip": extra.get("clip_skip", 1), "is_using_inpainting_conditioning": False,
        "version": version,
    }


def job_timestamp(started: float | None) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(started)) if started else "0"


def info_json(info: dict[str, Any]) -> str:
    """A JSON string; values JSON cannot hold become null, as upstream."""
    return json.dumps(info, default=lambda value: None, ensure_ascii=False)
