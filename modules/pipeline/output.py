"""The end of a batch: VAE decode, scripts' post-processing, infotext, saving.

`collect_batch` turns a batch's latents into images and appends them, with their
infotexts, seeds and prompts, to the job's `GenerationResult`; `infotext_for` writes
A1111's "parameters" text, including the sampler settings A1111 records only when they
differ from their defaults. At the end of a job of several pictures `save_batch_grid`
saves them as one grid (A1111's "Always save all generated image grids").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import torch
from PIL import Image

from modules.imaging import save as image_io
from modules.imaging.grid import image_grid
from modules.infotext import GenerationInfo, create_infotext
from modules.jobs import JobInterrupted
from modules.pipeline.params import GenerationResult
from modules.pipeline.plan import Plan
from modules.pipeline.vae_codec import decode_latents as vae_decode_latents
from modules.sampling import registry as R
from modules.scripts.base import PostprocessBatch, PostprocessImage
from modules.settings import Settings


def decode_latents(loaded, latents: torch.Tensor, settings: Settings | None = None,
                   cancel=None, mid_attention=None) -> list[Image.Image]:
    """VAE decode with the family's scale factor (tiled when `settings` call for it);
    `mid_attention`: the job's wrapper of the VAE's middle attention (`Plan.vae_attention`)."""
    return vae_decode_latents(loaded, latents, settings, cancel, mid_attention)


def new_result(plan: Plan, **extra: object) -> GenerationResult:
    """A job's empty result: `plan`'s warnings, and in `extra` the model, sampler and clip
    skip (then any `extra` fields the caller adds)."""
    result = GenerationResult(images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                              negative_prompts=[], warnings=plan.warnings)
    result.extra.update(sd_model_name=plan.loaded.info.model_name,
                        sd_model_hash=plan.loaded.shorthash, sampler_name=plan.sampler.label,
                        clip_skip=plan.settings.CLIP_stop_at_last_layers, **extra)
    return result


def collect_batch(runtime, plan: Plan, part: slice, latents: torch.Tensor,
                  result: GenerationResult, *, batch_index: int,
                  finish: Callable[[int, Image.Image], Image.Image] | None = None) -> None:
    """Decode, (finish: img2img's colour correction and overlay), infotexts, save.

    A skip or interrupt that arrives during the VAE decode (or a server stop) abandons
    it: the batch adds no image, and an interrupt marks the result interrupted. Latents
    of None (sampling stopped inside its first step) add no image either.
    """
    if latents is None:
        return
    try:
        images = decode_latents(plan.loaded, latents, plan.settings, plan.cancel,
                                plan.vae_attention)
    except JobInterrupted as stopped:
        command = plan.cancel.take() or stopped.command
        result.interrupted = result.interrupted or command == "interrupt"
        return
    decoded = PostprocessBatch(images, batch_index)
    plan.scripts.call("postprocess_batch", plan, decoded)
    for offset, image in enumerate(decoded.images):
        index = part.start + offset
        if plan.params.restore_faces:  # A1111: right after decode, before the overlay
            image = restore_faces(runtime, plan.settings, image)
        if finish is not None:
            image = finish(index, image)
        hooked = PostprocessImage(image=image, index=index)
        plan.scripts.call("postprocess_image", plan, hooked)
        image = hooked.image
        infotext = infotext_for(runtime, plan, index)
        result.images.append(image)
        result.infotexts.append(infotext)
        result.seeds.append(plan.seeds[index])
        result.subseeds.append(plan.subseeds[index])
        result.prompts.append(plan.prompts[index])
        result.negative_prompts.append(plan.negative_prompts[index])
        if plan.settings.samples_save and not plan.params.do_not_save_samples:
            path = str(save(runtime, plan, image, index, infotext, batch_index))
            result.saved_paths.append(path)
            plan.scripts.image_saved(image, plan, path, infotext)


def face_model_name(settings) -> str:
    """A1111's `face_restoration_model` ("CodeFormer" by default)."""
    return getattr(settings, "face_restoration_model", None) or "CodeFormer"


def restore_faces(runtime, settings, image: Image.Image) -> Image.Image:
    """A1111's "Restore faces": the chosen restorer at full visibility, CodeFormer with
    the `code_former_weight` setting (`modules/upscaling/face_registry.py`)."""
    from modules.upscaling.face_registry import face_restorers_of

    weight = float(getattr(settings, "code_former_weight", 0.5))
    return face_restorers_of(runtime).restore(image, face_model_name(settings), weight)


def infotext_for(runtime, plan: Plan, index: int) -> str:
    p, settings, loaded = plan.params, plan.settings, plan.loaded
    info = GenerationInfo(
        steps=p.steps, sampler_name=plan.sampler.label,
        scheduler=R.effective_schedule_label(plan.sampler, plan.scheduler),
        cfg_scale=p.cfg_scale, seed=plan.seeds[index], width=p.width, height=p.height,
        model_hash=loaded.shorthash if settings.add_model_hash_to_info else None,
        model_name=loaded.info.model_name if settings.add_model_name_to_info else None,
        vae_hash=(loaded.vae_sha256 or "")[:10] or None, vae_name=loaded.vae_name,
        subseed=plan.subseeds[index], subseed_strength=p.subseed_strength,
        seed_resize_from_w=p.seed_resize_from_w, seed_resize_from_h=p.seed_resize_from_h,
        clip_skip=settings.CLIP_stop_at_last_layers,
        eta_noise_seed_delta=settings.eta_noise_seed_delta,
        sampler_uses_ensd=plan.sampler.uses_ensd and (p.eta if p.eta is not None
                                                      else settings.eta_ancestral) != 0,
        randn_source=settings.randn_source, tiling=p.tiling,
        face_restoration=face_model_name(settings) if p.restore_faces else None,
        **{"token_merging_ratio": plan.token_merging, **plan.info_fields},
    )
    version = runtime.version if settings.add_version_to_infotext else None
    return create_infotext(info, prompt=plan.prompts[index],
                           negative_prompt=plan.negative_prompts[index],
                           extra={**plan.extra_params, **plan.networks.extra_params,
                                  **sampler_extra_params(plan), **compile_params(runtime)},
                           version=version)


def compile_params(runtime) -> dict:
    """`Torch compile` in the infotext when the U-Net runs compiled (--compile, --cuda-graphs)."""
    mode = getattr(runtime.models, "compile_mode", None)
    labels = {"default": "inductor", "reduce-overhead": "inductor + CUDA graphs"}
    return {"Torch compile": labels.get(mode, mode)} if mode else {}


def sampler_extra_params(plan: Plan) -> dict:
    """Sampler settings A1111 writes when they differ from their defaults."""
    settings, spec, extra = plan.settings, plan.sampler, {}
    eta = plan.params.eta if plan.params.eta is not None else (
        settings.eta_ancestral if spec.eta_source == "ancestral" else settings.eta_ddim)
    if spec.eta_source == "ancestral" and eta != 1.0:
        extra["Eta"] = eta
    if spec.eta_source == "ddim" and eta != 0.0:
        extra["Eta DDIM"] = eta
    for name, key, default in (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0),
                               ("s_tmax", "Sigma tmax", 0.0), ("s_noise", "Sigma noise", 1.0)):
        value = getattr(plan.params, name)
        value = getattr(settings, name) if value is None else value
        if name in spec.extra_params and value != default:
            extra[key] = value
    for name, key in (("sigma_min", "Schedule min sigma"), ("sigma_max", "Schedule max sigma"),
                      ("rho", "Schedule rho")):
        if getattr(settings, name):
            extra[key] = getattr(settings, name)
    if settings.always_discard_next_to_last_sigma:
        extra["Discard penultimate sigma"] = True
    if settings.sgm_noise_multiplier:
        extra["SGM noise multiplier"] = True
    if settings.s_min_uncond or plan.params.s_min_uncond:
        extra["NGMS"] = plan.params.s_min_uncond or settings.s_min_uncond
    if settings.skip_early_cond:
        extra["Skip Early CFG"] = settings.skip_early_cond
    return extra


def save(runtime, plan: Plan, image: Image.Image, index: int, infotext: str, batch_index: int):
    settings = plan.settings
    directory = output_folder(runtime, settings, f"outdir_{plan.kind}_samples")
    fields = image_io.FilenameFields(
        seed=plan.seeds[index], prompt=plan.prompts[index], width=image.width,
        height=image.height, sampler=plan.sampler.label, steps=plan.params.steps,
        cfg_scale=plan.params.cfg_scale, model_name=plan.loaded.info.model_name,
        model_hash=plan.loaded.shorthash, batch_number=None, generation_number=index)
    pattern = settings.samples_filename_pattern or ("[seed]" if settings.save_to_dirs
                                                    else "[seed]-[prompt_spaces]")
    save = image_io.saver_of(runtime)
    return save(image, directory, seed=plan.seeds[index], prompt=plan.prompts[index],
                infotext=infotext, extension=settings.samples_format, pattern=pattern,
                fields=fields, jpeg_quality=settings.jpeg_quality,
                write_metadata=settings.enable_pnginfo)


def save_batch_grid(runtime, plan: Plan, result: GenerationResult) -> None:
    """A job that made several pictures saves them as one grid, with the first picture's
    infotext, when `grid_save` is on and the request saves grids (A1111 does this in the
    pipeline, so the API and every UI get it). Its path goes in `result.extra["grid_path"]`
    (not `saved_paths`, which lists the pictures themselves)."""
    if len(result.images) < 2 or not plan.settings.grid_save or plan.params.do_not_save_grid:
        return
    grid = image_grid(result.images)  # the layout the API and the gallery show
    path = save_grid(runtime, plan.params, grid, result.infotexts[0], kind=plan.kind)
    if path is not None:
        result.extra["grid_path"] = path


def output_folder(runtime, settings, setting: str):
    """The folder of an output setting (`outdir_txt2img_samples`, ...), in a dated
    sub-folder when `save_to_dirs` is on."""
    root = runtime.paths.output_dir(getattr(settings, setting))
    return root / dt.date.today().strftime("%Y-%m-%d") if settings.save_to_dirs else root


def save_grid(runtime, params, grid: Image.Image, infotext: str, *, kind: str) -> str | None:
    """Save `grid` to the `kind` ("txt2img"/"img2img") grids folder when `grid_save` is on
    and the request saves grids; the path, else None. Through `saver_of(runtime)`: a
    cluster replica records the save for its ingress to write."""
    settings = runtime.settings.for_request(params.override_settings)
    if not settings.grid_save or params.do_not_save_grid:
        return None
    directory = output_folder(runtime, settings, f"outdir_{kind}_grids")
    save = image_io.saver_of(runtime)
    path = save(grid, directory, seed=None, prompt=params.prompt, infotext=infotext,
                extension=settings.samples_format, pattern="grid",
                write_metadata=settings.enable_pnginfo)
    return str(path)
