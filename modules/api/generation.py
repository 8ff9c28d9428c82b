"""From an A1111 txt2img request to `Txt2ImgParams`, and from a result to A1111's answer.

Request rules follow docs/a1111-semantics.md, "Request rules": `infotext` fills the fields the
client did not set, adds the settings it implies to `override_settings` and the always-on
scripts' arguments it carries (`Script.infotext_fields`) to `alwayson_scripts`; the sampler is
`sampler_name or sampler_index` (legacy "DPM++ 2M Karras" names are split); styles
are merged from `styles.csv`; `save_images` decides saving. Everything is checked
before the job is queued, so a bad request fails at once with the field named.
`restore_faces` needs the chosen restorer's file (a 422 naming the folder and file
otherwise: docs/face_restoration.md); `script_name` and
`alwayson_scripts` must name installed scripts, with args their `Args` accept. img2img requests are
converted by `to_img2img_params` (init images and mask decoded from base64 or URLs).
"""

from __future__ import annotations

import json
import time
from typing import Any

from modules.api.convert import decode_image, input_pixel_limit
from modules.api.errors import ApiError
from modules.api.schemas import GenerationRequest, Img2ImgRequest, Txt2ImgRequest
from modules.errors import without_paths
from modules.infotext import parse_infotext
from modules.models.errors import ModelLoadError
from modules.models.flow_parts import MODULES_SETTING, module_folders, resolve_modules
from modules.models.vae_select import AUTOMATIC, NONE, resolve_vae
from modules.pipeline.infotext_fields import (
    infotext_to_alwayson,
    infotext_to_request_fields,
    infotext_to_settings_overrides,
)
from modules.pipeline.limits import PixelBudget, check_pixel_budget
from modules.pipeline.params import GenerationResult, Img2ImgParams, Txt2ImgParams, refiner_name
from modules.sampling import registry as R
from modules.settings import Settings, SettingsError, validate
from modules.styles import apply_styles, load_styles

PARAM_FIELDS = ("seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
                "batch_size", "n_iter", "steps", "cfg_scale", "width", "height", "eta",
                "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise", "distilled_cfg_scale")
HIRES_FIELDS = ("enable_hr", "denoising_strength", "hr_scale", "hr_second_pass_steps",
                "hr_resize_x", "hr_resize_y", "hr_prompt", "hr_negative_prompt",
                "hr_distilled_cfg")
IMG2IMG_FIELDS = ("resize_mode", "denoising_strength", "image_cfg_scale", "mask_blur_x",
                  "mask_blur_y", "mask_round", "inpainting_fill", "inpaint_full_res",
                  "inpaint_full_res_padding", "inpainting_mask_invert",
                  "initial_noise_multiplier")


def apply_infotext(request: GenerationRequest, settings: Settings, runtime) -> GenerationRequest:
    """Fill unset fields and override_settings from `request.infotext`.

    Rule 1 of docs/a1111-semantics.md, "Request rules"."""
    if not request.infotext:
        return request
    parsed = parse_infotext(request.infotext)
    fields = {name: value for name, value in infotext_to_request_fields(parsed).items()
              if name in type(request).model_fields and name not in request.model_fields_set}
    overrides = dict(request.override_settings or {})
    implied = infotext_to_settings_overrides(parsed, settings.to_dict())
    for name, value in implied.items():
        if name not in Settings.names() or name in overrides:
            continue
        if name == "sd_model_checkpoint":
            value = _checkpoint_title_or_none(runtime, str(value))
            if value is None:
                continue  # A1111 drops an unknown model hash
        if name == "sd_vae" and not _known_vae(runtime, str(value)):
            continue  # and falls back from an unknown VAE
        if name == MODULES_SETTING and not _known_modules(runtime, value):
            continue  # modules (Forge's "Module N") this server does not have
        overrides[name] = value
    fields["alwayson_scripts"] = alwayson_from_infotext(request, parsed, runtime)
    updated = request.model_copy(update={**fields, "override_settings": overrides or None})
    return type(request).model_validate(updated.model_dump(exclude_unset=False))


def alwayson_from_infotext(request: GenerationRequest, parsed, runtime) -> dict[str, Any]:
    """The request's `alwayson_scripts` plus an entry for each always-on script whose
    infotext keys the infotext has; the client's own entry for a script wins, whole."""
    own = dict(request.alwayson_scripts or {})
    registry = getattr(runtime, "extensions", None)
    if registry is None:
        return own
    scripts = registry.alwayson(isinstance(request, Img2ImgRequest))
    taken = {title.strip().lower() for title in own}
    implied = {title: entry for title, entry in infotext_to_alwayson(parsed, scripts).items()
               if title.strip().lower() not in taken}
    return {**own, **implied}


def _known_modules(runtime, names) -> bool:
    try:
        check_module_names(runtime, names)
    except SettingsError:
        return False
    return True


def _known_vae(runtime, name: str) -> bool:
    try:
        check_vae_name(runtime, name)
    except SettingsError:
        return False
    return True


def _checkpoint_title_or_none(runtime, query: str) -> str | None:
    try:
        return runtime.models.find(query).title
    except ModelLoadError:
        return None


def check_scripts(request: GenerationRequest, runtime) -> None:
    """script_name / script_args / alwayson_scripts resolve to scripts with valid args
    (422 naming the script, and the field for bad args), as rules 3-4 of docs/a1111-semantics.md,
    "Request rules"."""
    from modules.extensions.registry import ScriptNotFound
    from modules.scripts.args import ScriptArgsError
    from modules.scripts.selected import resolve_selected

    is_img2img = isinstance(request, Img2ImgRequest)
    registry = runtime.extensions
    try:
        if request.script_name:
            if registry is None:
                raise ScriptNotFound(f"Script '{request.script_name}' not found")
            resolve_selected(runtime, request, is_img2img=is_img2img)
        if registry is not None:
            registry.script_run(alwayson_args=request.alwayson_scripts, is_img2img=is_img2img,
                                warnings=[])
        elif request.alwayson_scripts:
            raise ScriptNotFound(f"always on script {next(iter(request.alwayson_scripts))} "
                                 "not found")
    except (ScriptNotFound, ScriptArgsError) as error:
        raise ApiError(422, str(error)) from error


def check_script_params(params, runtime) -> None:
    """A selectable script's own check of the request (e.g. X/Y/Z values): 422 if bad."""
    if not params.script_name:
        return
    import dataclasses

    from modules.scripts.selected import resolve_selected

    is_img2img = isinstance(params, Img2ImgParams)
    script, args = resolve_selected(runtime, params, is_img2img=is_img2img)
    try:
        script.check(runtime, dataclasses.replace(params, script_name=None, script_args=[]), args)
    except ValueError as error:
        raise ApiError(422, str(error)) from error


def check_restore_faces(request: GenerationRequest, runtime, overrides: dict) -> bool:
    """`restore_faces`, unset meaning the `face_restoration` setting (A1111; the request's
    overrides included); when on, the chosen restorer's file must be installed (422
    naming the folder and the file)."""
    settings = runtime.settings.for_request(overrides)
    wanted = request.restore_faces
    if wanted is None:
        wanted = bool(getattr(settings, "face_restoration", False))
    if wanted:
        from modules.pipeline.output import face_model_name
        from modules.upscaling.face_registry import face_restorers_of

        face_restorers_of(runtime).path_for(face_model_name(settings))
    return bool(wanted)


def check_refiner(runtime, name: str | None) -> str | None:
    """The refiner checkpoint, which must exist (404 naming it, as a checkpoint override)."""
    if refiner_name(name) is not None:
        check_overrides(runtime, {"sd_model_checkpoint": name})
    return name


def resolve_sampler_names(request: GenerationRequest) -> tuple[str, str]:
    """(sampler label, scheduler label), or 400 "Sampler not found" as A1111."""
    name = request.sampler_name or request.sampler_index
    try:
        sampler, scheduler = R.resolve_sampler(name, request.scheduler)
    except ValueError as error:
        kind = "Scheduler" if "scheduler" in str(error) else "Sampler"
        raise ApiError(400, f"{kind} not found: {error}") from error
    return sampler.label, scheduler.label


def check_overrides(runtime, overrides: dict[str, Any]) -> dict[str, Any]:
    """Validate override_settings (guarded settings refused: 403); the checkpoint must
    exist (404 naming it), the VAE too (422 naming `sd_vae`)."""
    runtime.settings.for_request(overrides)  # SettingsError names the key
    check_vae_name(runtime, overrides.get("sd_vae"))
    check_module_names(runtime, overrides.get(MODULES_SETTING))
    checkpoint = overrides.get("sd_model_checkpoint")
    if checkpoint:
        try:
            runtime.models.find(checkpoint)
        except ModelLoadError as error:
            raise ApiError(404, f"Checkpoint not found: {checkpoint!r} ({error.reason})") from error
    return overrides


def check_vae_name(runtime, name: str | None) -> None:
    """`sd_vae` must be "Automatic", "None" or a VAE file the server lists (422)."""
    if name is None or name in (AUTOMATIC, NONE):
        return
    try:
        resolve_vae(name, checkpoint_path="", vae_dir=runtime.paths.vae_dir,
                    checkpoint_dirs=runtime.paths.checkpoint_dirs)
    except ModelLoadError as error:
        raise SettingsError(f"sd_vae: {str(name)[:100]!r}: {error.reason}") from None


def check_module_names(runtime, names) -> None:
    """`forge_additional_modules`: file names inside the text-encoder / VAE folders (422)."""
    if not names:
        return
    try:
        resolve_modules(list(validate(MODULES_SETTING, names)), module_folders(runtime.paths))
    except ModelLoadError as error:
        raise SettingsError(f"{MODULES_SETTING}: {without_paths(error.reason)}") from None


def to_params(request: Txt2ImgRequest, runtime) -> Txt2ImgParams:
    """The validated pipeline request for an API body (after `apply_infotext`)."""
    firstpass = (decode_image(request.firstpass_image, runtime.settings.current,
                              field="firstpass_image", max_pixels=input_pixel_limit(runtime))
                 if request.firstpass_image else None)
    params = Txt2ImgParams(**common_fields(request, runtime),
                           **{name: getattr(request, name) for name in HIRES_FIELDS},
                           **hires_names(request, runtime), firstpass_image=firstpass)
    params.validate()
    check_pixel_budget(params, PixelBudget.from_args(runtime.args))
    check_script_params(params, runtime)
    return params


def hires_names(request: Txt2ImgRequest, runtime) -> dict[str, Any]:
    """hr_upscaler (null -> the default latent mode), hires sampler/scheduler/checkpoint."""
    fields: dict[str, Any] = {"hr_upscaler": request.hr_upscaler or "Latent",
                              "hr_checkpoint_name": request.hr_checkpoint_name}
    if not request.enable_hr:
        return fields
    if request.hr_sampler_name and request.hr_sampler_name != "Use same sampler":
        try:
            sampler, scheduler = R.resolve_sampler(request.hr_sampler_name, request.hr_scheduler)
        except ValueError as error:
            raise ApiError(400, f"Sampler not found: {error}") from error
        fields.update(hr_sampler_name=sampler.label, hr_scheduler=scheduler.label)
    elif request.hr_scheduler:
        fields["hr_scheduler"] = request.hr_scheduler
    if request.hr_checkpoint_name and request.hr_checkpoint_name != "Use same checkpoint":
        check_overrides(runtime, {"sd_model_checkpoint": request.hr_checkpoint_name})
    return fields


def to_img2img_params(request: Img2ImgRequest, runtime) -> Img2ImgParams:
    """The validated img2img request: images decoded, `mask_blur` sets both blurs."""
    if not request.init_images:
        raise ApiError(404, "Init image not found")
    settings = runtime.settings.current
    limit = input_pixel_limit(runtime)
    with runtime.jobs.side_work:  # decoding is bounded like the other picture routes
        images = [decode_image(text, settings, field=f"init_images[{index}]", max_pixels=limit)
                  for index, text in enumerate(request.init_images)]
        mask = (decode_image(request.mask, settings, field="mask", max_pixels=limit)
                if request.mask else None)
    fields = {name: getattr(request, name) for name in IMG2IMG_FIELDS}
    if request.mask_blur is not None:
        fields.update(mask_blur_x=request.mask_blur, mask_blur_y=request.mask_blur)
    if fields["denoising_strength"] is None:
        fields["denoising_strength"] = 0.75
    params = Img2ImgParams(**common_fields(request, runtime), init_images=images, mask=mask,
                           **fields)
    params.validate()
    check_pixel_budget(params, PixelBudget.from_args(runtime.args))
    check_script_params(params, runtime)
    return params


def common_fields(request: GenerationRequest, runtime) -> dict[str, Any]:
    """The fields txt2img and img2img share, checked and resolved."""
    check_scripts(request, runtime)
    sampler, scheduler = resolve_sampler_names(request)
    styles = list(request.styles or [])
    prompt, negative = apply_styles(request.prompt, request.negative_prompt, styles,
                                    load_styles(runtime.paths.styles_file))
    overrides = check_overrides(runtime, dict(request.override_settings or {}))
    return dict(
        prompt=prompt, negative_prompt=negative, styles=styles, sampler_name=sampler,
        scheduler=scheduler, override_settings=overrides, tiling=bool(request.tiling),
        restore_faces=check_restore_faces(request, runtime, overrides),
        do_not_save_samples=not request.save_images, do_not_save_grid=not request.save_images,
        script_name=request.script_name or None, script_args=list(request.script_args or []),
        alwayson_scripts=dict(request.alwayson_scripts or {}),
        refiner_checkpoint=check_refiner(runtime, request.refiner_checkpoint),
        refiner_switch_at=request.refiner_switch_at,
        **{name: getattr(request, name) for name in PARAM_FIELDS},
    )


def face_model_of(infotexts: list[str]) -> str | None:
    """The restorer the job used, as its infotext names it (`Face restoration: ...`)."""
    return parse_infotext(infotexts[0]).get("Face restoration") if infotexts else None


def info_dict(request: GenerationRequest, params, result: GenerationResult,
              *, started: float | None, version: str, index_of_first_image: int,
              infotexts: list[str]) -> dict[str, Any]:
    """A1111's `Processed.js()` keys (docs/a1111-semantics.md, "Generation response"), plus
    `warnings` when the job had any (a network or ControlNet file that was skipped, ...), without
    server paths."""
    extra = result.extra
    warnings = [without_paths(text) for text in dict.fromkeys(result.warnings)]
    return {
        "prompt": params.prompt, "all_prompts": result.prompts,
        "negative_prompt": params.negative_prompt, "all_negative_prompts": result.negative_prompts,
        "seed": result.seeds[0] if result.seeds else params.seed, "all_seeds": result.seeds,
        "subseed": result.subseeds[0] if result.subseeds else params.subseed,
        "all_subseeds": result.subseeds, "subseed_strength": params.subseed_strength,
        "width": params.width, "height": params.height,
        "sampler_name": extra.get("sampler_name", params.sampler_name),
        "cfg_scale": params.cfg_scale, "steps": params.steps, "batch_size": params.batch_size,
        "restore_faces": bool(params.restore_faces),
        "face_restoration_model": face_model_of(infotexts) if params.restore_faces else None,
        "sd_model_name": extra.get("sd_model_name"), "sd_model_hash": extra.get("sd_model_hash"),
        "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": params.seed_resize_from_w,
        "seed_resize_from_h": params.seed_resize_from_h,
        "denoising_strength": getattr(params, "denoising_strength", None),
        "extra_generation_params": {},
        "index_of_first_image": index_of_first_image, "infotexts": infotexts,
        "styles": params.styles, "job_timestamp": job_timestamp(started),
        "clip_skip": extra.get("clip_skip", 1),
        "is_using_inpainting_conditioning": extra.get("is_using_inpainting_conditioning", False),
        "version": version,
    } | ({"warnings": warnings} if warnings else {})


def job_timestamp(started: float | None) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(started)) if started else "0"


def info_json(info: dict[str, Any]) -> str:
    """A JSON string; values JSON cannot hold become null, as upstream."""
    return json.dumps(info, default=lambda value: None, ensure_ascii=False)
