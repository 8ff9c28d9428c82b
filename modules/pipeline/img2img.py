"""img2img and inpainting: from init images (and a mask) to saved images with infotext.

`img2img(runtime, params)` is a generator with txt2img's protocol (it yields
`Progress`, accepts "skip"/"interrupt", returns a `GenerationResult`). The work
follows A1111 (docs/a1111-semantics.md, "img2img", "Initial noise" and "Step rule"):

1. pictures (`prepare_images`): the mask is binarised, inverted if asked, blurred;
   "Only masked" crops the mask's padded bounding box widened to the output's
   aspect ratio; images are flattened onto the background colour, resized with the
   resize mode, the overlay of the untouched original and the colour-correction
   target are taken, and "fill" pre-paints the masked area;
2. latents (`initial_latents`): each image is VAE-encoded (posterior sampled with a
   noise seeded by its seed), resized in latent space for "Just resize (latent
   upscale)", masked content "latent noise"/"latent nothing" applied, and for
   9-channel inpainting models the `[mask, masked-image latent]` conditioning built;
3. sampling: `processing.sample_batch` with a `LatentStart`: the schedule tail of
   A1111's denoising-strength rule, first noise `rng.next() * noise multiplier`, the
   mask keeping the original latent outside the repainted area;
4. per image: decode, colour correction, paste back and overlay, infotext, save.

Outpainting is "Resize and fill" here, or the Outpainting mk2 and Poor man's
outpainting scripts (`modules/scripts/builtin/`), which drive this function.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from modules.devices import execution_device
from modules.imaging import masks as M
from modules.imaging.color_correction import ColorCorrection
from modules.imaging.resize import resize, resize_image
from modules.jobs import Command, JobInterrupted, Progress
from modules.pipeline.image_conditioning import inpaint_image_cond
from modules.pipeline.output import collect_batch, new_result, save_batch_grid
from modules.pipeline.params import MASKED_CONTENT, GenerationResult, Img2ImgParams, ParamsError
from modules.pipeline.plan import LatentStart, Plan, plan_txt2img
from modules.pipeline.sample import sample_batch
from modules.pipeline.vae_codec import encode, images_to_tensor, sample_posterior
from modules.sampling.seeds import create_random_tensors
from modules.scripts.base import BatchInfo


@dataclass
class Prepared:
    """The pictures of one img2img job, ready to encode, and what goes back on top."""

    images: list[Image.Image]  # one per batch slot (or one for the whole batch)
    mask: Image.Image | None = None  # "L", the processing size; white = repaint
    overlays: list[Image.Image] = field(default_factory=list)
    originals: list[Image.Image] = field(default_factory=list)  # under the overlays
    paste_to: tuple[int, int, int, int] | None = None  # x, y, w, h for "Only masked"
    corrections: list[ColorCorrection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def plan_img2img(runtime, params: Img2ImgParams) -> Plan:
    params.validate()
    if params.scale_by is not None:
        first = params.init_images[0]
        params = replace(params, width=max(64, int(first.width * params.scale_by) // 8 * 8),
                         height=max(64, int(first.height * params.scale_by) // 8 * 8))
    if len(params.init_images) not in (1, params.batch_size):
        raise ParamsError("init_images", f"{len(params.init_images)} images for a batch size "
                                         f"of {params.batch_size} (send 1 or batch_size)")
    plan = plan_txt2img(runtime, params)
    plan.kind = "img2img"
    # A1111: img2img's own ratio when set, else the txt2img one.
    plan.token_merging = (plan.settings.token_merging_ratio_img2img
                          or plan.settings.token_merging_ratio)
    return plan


def img2img(runtime, params: Img2ImgParams) -> Generator[Progress, Command, GenerationResult]:
    """Run an img2img / inpainting job; see the module docstring."""
    if params.script_name:  # a selectable script replaces the normal processing
        from modules.scripts.selected import run_selected

        return (yield from run_selected(runtime, params, is_img2img=True, process=img2img))
    plan = plan_img2img(runtime, params)
    plan.scripts.call("before_process", plan)
    plan.scripts.call("process", plan)
    p, settings = plan.params, plan.settings
    prepared = prepare_images(p, settings, upscale=upscale_fn(runtime, settings))
    plan.warnings += prepared.warnings
    try:
        posteriors = encode_init(plan, prepared)
        image_cond = inpainting_cond(plan, prepared) if plan.loaded.family.is_inpainting else None
    except JobInterrupted as stopped:  # stopped inside the VAE encode: nothing to sample
        return stopped_while_encoding(plan, stopped)
    plan.info_fields = {"denoising_strength": p.denoising_strength}
    if plan.loaded.family.is_inpainting:
        plan.info_fields["conditional_mask_weight"] = settings.inpainting_mask_weight
    # img2img's own keys first; those the plan (low bits, refiner) and the scripts' `process`
    # wrote already are kept after them.
    plan.extra_params = {**extra_params(p, noise_multiplier(p, settings), prepared),
                         **plan.extra_params}
    result = new_result(
        plan, is_using_inpainting_conditioning=plan.loaded.family.is_inpainting)
    size = p.batch_size
    for batch in range(p.n_iter):
        part = slice(batch * size, (batch + 1) * size)
        start = initial_latents(plan, prepared, posteriors, part)
        start.image_cond = image_cond
        plan.scripts.call("process_batch", plan, BatchInfo(batch, plan.prompts[part],
                                                           plan.seeds[part], plan.subseeds[part]))
        latents, command = yield from sample_batch(plan, part, job_no=batch, start=start)
        collect_batch(runtime, plan, part, latents, result, batch_index=batch,
                      finish=finisher(soft_overlays(plan, prepared, start, latents), size))
        if command == "interrupt" or result.interrupted:
            result.interrupted = True
            break
    save_batch_grid(runtime, plan, result)
    plan.scripts.call("postprocess", plan, result)
    return result


def stopped_while_encoding(plan: Plan, stopped: JobInterrupted) -> GenerationResult:
    """The empty result of a job stopped before sampling (a skip ends it as well: no
    batch can run without the encoded pictures)."""
    result = new_result(plan)
    result.interrupted = (plan.cancel.take() or stopped.command) == "interrupt"
    plan.scripts.call("postprocess", plan, result)
    return result


def upscale_fn(runtime, settings):
    """The `upscaler_for_img2img` setting as a resize helper (None: Lanczos only)."""
    name = settings.upscaler_for_img2img
    if not name or name == "None":
        return None
    from modules.upscaling.registry import upscalers_of

    registry = upscalers_of(runtime)
    return lambda image, scale: registry.upscale(image, scale, name, settings)


# ---------------------------------------------------------------- pictures


def flatten(image: Image.Image, background: str) -> Image.Image:
    """RGB, with transparent pixels composited onto `background`."""
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background)
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def prepare_mask(p: Img2ImgParams, prepared: Prepared):
    """(processing-size mask, overlay mask, crop region) or Nones without a mask."""
    source = p.mask if p.mask is not None else M.mask_from_alpha(p.init_images[0])
    if source is None:
        return None, None, None
    mask = M.binary_mask(source, round=p.mask_round)
    if p.inpainting_mask_invert:
        mask = ImageOps.invert(mask)
    mask = M.blur_mask(mask, p.mask_blur_x, p.mask_blur_y)
    region = M.crop_region(mask, p.inpaint_full_res_padding) if p.inpaint_full_res else None
    if p.inpaint_full_res and region is None:
        prepared.warnings.append('Unable to perform "Inpaint Only mask" because the mask is '
                                 'blank; the whole picture was processed instead.')
    if region is None:
        mask = resize_image(0 if p.resize_mode == 3 else p.resize_mode, mask, p.width, p.height)
        return mask, M.overlay_mask(mask), None
    region = M.expand_crop_region(region, p.width, p.height, mask.width, mask.height)
    for_overlay = M.overlay_mask(mask)
    return resize_image(2, mask.crop(region), p.width, p.height), for_overlay, region


def prepare_images(p: Img2ImgParams, settings, *, upscale=None) -> Prepared:
    """Step 1 of the module docstring, for every init image."""
    prepared = Prepared(images=[])
    mask, for_overlay, region = prepare_mask(p, prepared)
    prepared.mask = mask
    if region is not None:
        x1, y1, x2, y2 = region
        prepared.paste_to = (x1, y1, x2 - x1, y2 - y1)
    for original in p.init_images:
        image = flatten(original, settings.img2img_background_color)
        if region is None:
            image = resize_image(p.resize_mode, image, p.width, p.height, upscale)
        if mask is not None and (settings.overlay_inpaint or region is not None):
            base = image if image.size == for_overlay.size else resize(image, *for_overlay.size)
            prepared.overlays.append(M.overlay(base, for_overlay))
            prepared.originals.append(base)
        if settings.img2img_color_correction:
            prepared.corrections.append(ColorCorrection.from_image(image))
        if region is not None:
            image = resize_image(2, image.crop(region), p.width, p.height, upscale)
        if mask is not None and p.inpainting_fill != 1:
            image = M.fill(image, mask if image.size == mask.size else resize(mask, *image.size))
        prepared.images.append(image)
    return prepared


# ---------------------------------------------------------------- latents


def latent_mask(mask: Image.Image, size: tuple[int, int], *, round: bool) -> torch.Tensor:
    """The repaint mask at latent size (1, 1, h, w), bicubic-resized, optionally rounded."""
    small = mask.convert("RGB").resize(size, resample=Image.Resampling.BICUBIC)
    values = images_to_tensor([small])[:, :1] * 0.5 + 0.5
    return torch.round(values) if round else values


def encode_init(plan: Plan, prepared: Prepared) -> list:
    """The VAE posterior of every prepared picture (sampled per image seed later)."""
    loaded, settings = plan.loaded, plan.settings
    vae = loaded.vae
    device = execution_device(vae)
    return [encode(vae, images_to_tensor([image]).to(device), settings, plan.cancel)
            for image in prepared.images]


def initial_latents(plan: Plan, prepared: Prepared, posteriors: list, part: slice
                    ) -> LatentStart:
    """Step 2 of the module docstring for one batch: image i's latent is sampled with
    noise seeded by its own seed, so a batch equals the same images run one by one."""
    p, loaded = plan.params, plan.loaded
    factor = loaded.family.vae.downscale
    size = (p.height // factor, p.width // factor)
    seeds = plan.seeds[part]
    latents = []
    for slot, seed in enumerate(seeds):
        posterior = posteriors[min(slot, len(posteriors) - 1)]
        latent = sample_posterior(loaded, posterior, [seed])
        if latent.shape[-2:] != size:  # "Just resize (latent upscale)"
            latent = F.interpolate(latent, size=size, mode="bilinear")
        latents.append(latent)
    init = torch.cat(latents)
    start = LatentStart(init_latent=init, denoising_strength=p.denoising_strength,
                        steps=p.steps, noise_multiplier=noise_multiplier(p, plan.settings))
    if prepared.mask is not None:
        repaint = latent_mask(prepared.mask, (size[1], size[0]), round=p.mask_round)
        repaint = repaint.expand_as(init).to(init)
        start.keep = 1.0 - repaint
        start.init_latent = masked_content(plan, p.inpainting_fill, start.init_latent, repaint)
    return start


def noise_multiplier(p: Img2ImgParams, settings) -> float:
    if p.initial_noise_multiplier is not None:
        return p.initial_noise_multiplier
    return settings.initial_noise_multiplier


def masked_content(plan: Plan, fill: int, init: torch.Tensor,
                   repaint: torch.Tensor) -> torch.Tensor:
    """"latent noise": seed noise in the mask (the first batch's seeds, as A1111);
    "latent nothing": zeros there; "fill" and "original" keep the encoded picture."""
    if MASKED_CONTENT[fill] == "latent noise":
        noise = create_random_tensors(tuple(init.shape[1:]), plan.seeds[:init.shape[0]],
                                      source=plan.settings.randn_source)
        return init * (1 - repaint) + noise.to(init) * repaint
    if MASKED_CONTENT[fill] == "latent nothing":
        return init * (1 - repaint)
    return init


def inpainting_cond(plan: Plan, prepared: Prepared) -> torch.Tensor:
    """`[mask, masked latent]` for 9-channel models (all-ones mask without a mask)."""
    p = plan.params
    images = [image if image.size == (p.width, p.height) else resize(image, p.width, p.height)
              for image in prepared.images]
    source = images_to_tensor(images)
    if prepared.mask is None:
        mask = torch.ones(source.shape[0], 1, *source.shape[-2:])
    else:
        mask = images_to_tensor([prepared.mask])[:, :1] * 0.5 + 0.5
    cond = inpaint_image_cond(plan.loaded, source, mask.expand(source.shape[0], -1, -1, -1),
                              weight=plan.settings.inpainting_mask_weight,
                              settings=plan.settings, round_mask=p.mask_round,
                              cancel=plan.cancel)
    batch = p.batch_size
    return cond.expand(batch, -1, -1, -1).clone() if cond.shape[0] == 1 else cond


# ---------------------------------------------------------------- results


def soft_overlays(plan: Plan, prepared: Prepared, start: LatentStart, latents) -> Prepared:
    """With soft inpainting, overlays whose opacity follows the change in the mask's
    band (`SoftBlend.overlay_masks`); "Only masked" keeps the plain ones."""
    blend = plan.inpaint_blend
    if blend is None or latents is None or not prepared.overlays or prepared.paste_to:
        return prepared
    masks = blend.overlay_masks(prepared.mask, start.init_latent, latents)
    originals = prepared.originals
    layers = [M.overlay(originals[min(slot, len(originals) - 1)], mask)
              for slot, mask in enumerate(masks)]
    return replace(prepared, overlays=layers)


def finisher(prepared: Prepared, batch_size: int):
    """Colour correction, then paste back / overlay, for image `index` of the job."""
    def finish(index: int, image: Image.Image) -> Image.Image:
        slot = index % batch_size
        if prepared.corrections:
            image = prepared.corrections[min(slot, len(prepared.corrections) - 1)].apply(image)
        if prepared.overlays:
            layer = prepared.overlays[min(slot, len(prepared.overlays) - 1)]
            image = M.apply_overlay(image, layer, prepared.paste_to)
        return image
    return finish


def extra_params(p: Img2ImgParams, multiplier: float, prepared: Prepared) -> dict:
    """img2img's infotext keys, in A1111's order (docs/a1111-semantics.md, "Key order")."""
    extra: dict = {}
    if prepared.mask is not None:
        if p.inpainting_mask_invert:
            extra["Mask mode"] = "Inpaint not masked"
        if p.mask_blur_x == p.mask_blur_y and p.mask_blur_x > 0:
            extra["Mask blur"] = p.mask_blur_x
        if prepared.paste_to is not None:
            extra["Inpaint area"] = "Only masked"
            extra["Masked area padding"] = p.inpaint_full_res_padding
        if p.inpainting_fill != 1:
            extra["Masked content"] = MASKED_CONTENT[p.inpainting_fill]
    if multiplier != 1.0:
        extra["Noise multiplier"] = multiplier
    return extra
