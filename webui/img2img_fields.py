"""img2img widgets -> `Img2ImgParams`: the sub-tab's pictures, resize and inpaint options.

The img2img tab has one input per sub-tab (A1111's modes, docs/a1111-semantics.md, "img2img modes").
Each mode turns its widget values into init images and an optional mask here:

- img2img: the uploaded picture;
- Sketch: the picture with the strokes on it (the editor's composite);
- Inpaint: the picture, and a mask where strokes were drawn (any layer pixel that
  is not fully transparent), as Gradio 6's `ImageEditor` gives `{background, layers,
  composite}` instead of Gradio 3's `{image, mask}`;
- Inpaint sketch: the composite, repainted where it differs from the picture
  (`modules.pipeline.img2img_batch.sketch_mask`);
- Inpaint upload: a picture and a separate mask image.

Radios arrive as their labels and are turned into A1111's indices; a label that is
not offered is a `ParamsError` naming the field. Batch runs from folders are in
`webui.tabs.img2img` (they call `modules.pipeline.img2img_batch`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from modules.pipeline.img2img_batch import composite_sketch, sketch_mask
from modules.pipeline.params import MASKED_CONTENT, RESIZE_MODES, Img2ImgParams, ParamsError
from webui.fields import COMMON_FIELDS, common_params, normalized

MODES: tuple[str, ...] = ("img2img", "sketch", "inpaint", "inpaint_sketch", "inpaint_upload",
                          "batch")
MODE_TITLES: dict[str, str] = {"img2img": "img2img", "sketch": "Sketch", "inpaint": "Inpaint",
                               "inpaint_sketch": "Inpaint sketch",
                               "inpaint_upload": "Inpaint upload", "batch": "Batch"}
INPAINT_MODES = ("inpaint", "inpaint_sketch", "inpaint_upload")
MASK_MODES: tuple[str, ...] = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS: tuple[str, ...] = ("Whole picture", "Only masked")
RESIZE_TO, RESIZE_BY = "Resize to", "Resize by"

IMG2IMG_LABELS: dict[str, str] = {
    "resize_mode": "Resize mode", "resize_by": "Resize to / by", "scale_by": "Scale",
    "denoising_strength": "Denoising strength", "mask_blur": "Mask blur",
    "inpainting_mask_invert": "Mask mode", "inpainting_fill": "Masked content",
    "inpaint_full_res": "Inpaint area", "inpaint_full_res_padding": "Only masked padding, pixels",
    "init_images": "Image", "mask": "Mask",
}
# The tab's widget fields in order (the pictures come from the sub-tab's own widgets).
IMG2IMG_FIELDS: tuple[str, ...] = (*COMMON_FIELDS, *(name for name in IMG2IMG_LABELS
                                                    if name not in ("init_images", "mask")))


def choice_index(name: str, value: Any, choices: tuple[str, ...]) -> int:
    """A radio's label as its index; an int index is accepted as it is."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(choices):
        return value
    if value in choices:
        return choices.index(value)
    raise ParamsError(name, f"{value!r} is not one of {list(choices)}")


def img2img_params_from_fields(values: Mapping[str, Any], images: list, mask: Any
                               ) -> Img2ImgParams:
    """A request from widget values and the mode's pictures; validate() is the next step."""
    v = normalized(values, (*IMG2IMG_FIELDS, "script_name", "script_args"))
    blur = v.get("mask_blur", 4)
    by_scale = v.get("resize_by") == RESIZE_BY
    return Img2ImgParams(
        **common_params(v), init_images=images, mask=mask,
        resize_mode=choice_index("resize_mode", v.get("resize_mode", RESIZE_MODES[0]),
                                 RESIZE_MODES),
        denoising_strength=v.get("denoising_strength", 0.75),
        scale_by=v.get("scale_by", 1.0) if by_scale else None,
        mask_blur_x=blur, mask_blur_y=blur,
        inpainting_mask_invert=choice_index(
            "inpainting_mask_invert", v.get("inpainting_mask_invert", MASK_MODES[0]), MASK_MODES),
        inpainting_fill=choice_index("inpainting_fill", v.get("inpainting_fill", "original"),
                                     MASKED_CONTENT),
        inpaint_full_res=bool(choice_index(
            "inpaint_full_res", v.get("inpaint_full_res", INPAINT_AREAS[0]), INPAINT_AREAS)),
        inpaint_full_res_padding=v.get("inpaint_full_res_padding", 32),
    )


# ---------------------------------------------------------------- pictures per mode


def editor_background(value: Mapping | None) -> Image.Image | None:
    if not value:
        return None
    return value.get("background")


def layers_mask(value: Mapping, size: tuple[int, int]) -> Image.Image | None:
    """White wherever any drawn layer is not fully transparent; None when nothing is drawn."""
    alpha = np.zeros((size[1], size[0]), dtype=bool)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        rgba = layer.convert("RGBA")
        if rgba.size != size:  # a canvas larger than the picture is cropped to it
            rgba = rgba.crop((0, 0, *size))
        alpha |= np.asarray(rgba.getchannel("A")) > 0
    if not alpha.any():
        return None
    return Image.fromarray((alpha * 255).astype(np.uint8), mode="L")


def mode_images(mode: str, *, image=None, sketch=None, inpaint=None, inpaint_sketch=None,
                upload=None, upload_mask=None) -> tuple[list, Any]:
    """(init images, mask) of one sub-tab; a missing picture raises naming the sub-tab."""
    title = MODE_TITLES.get(mode, mode)
    if mode == "img2img":
        return [_required(image, title)], None
    if mode == "sketch":
        background = _required(editor_background(sketch), title)
        return [_composite(sketch, background)], None
    if mode == "inpaint":
        background = _required(editor_background(inpaint), title)
        mask = layers_mask(inpaint, background.size)
        if mask is None:
            raise ParamsError("mask", f"{title}: draw a mask over the picture first")
        return [background.convert("RGB")], mask
    if mode == "inpaint_sketch":
        background = _required(editor_background(inpaint_sketch), title)
        sketched = _composite(inpaint_sketch, background)
        return [sketched], sketch_mask(background, sketched)
    if mode == "inpaint_upload":
        if upload_mask is None:
            raise ParamsError("mask", f"{title}: upload a mask image")
        return [_required(upload, title)], upload_mask
    raise ParamsError("mode", f"unknown img2img mode {mode!r}")


def _composite(value: Mapping, background: Image.Image) -> Image.Image:
    """The picture with every drawn layer on top (computed, not the editor's composite,
    whose canvas may be larger than the picture)."""
    result = background.convert("RGB")
    for layer in value.get("layers") or []:
        if layer is not None:
            result = composite_sketch(result, layer.convert("RGBA").crop((0, 0, *result.size)))
    return result


def _required(image: Any, title: str) -> Image.Image:
    if image is None:
        raise ParamsError("init_images", f"{title}: no picture was given")
    return image
