"""One validated unit -> an `ActiveUnit` (model loaded, picture preprocessed and fitted).

Kept apart from the script so that the API's `/controlnet/detect` and tests run the
same preprocessing: `detect_map` is the picture -> control map part, `prepare_unit`
adds the resize to the generation size and the model.

The model's kind (`library.ModelEntry.kind`) decides the unit: a ControlNet or a
T2I-Adapter gets the hint as above; a style T2I-Adapter and an IP-Adapter take the
picture itself through a CLIP image encoder from `models/clip_vision/` (the unit's module
must then be one of the CLIP modules, `preprocessors.CLIP_MODULES`), tokens computed once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easel_controlnet.adapters import AdapterUnit, IPAdapterUnit, StyleUnit, T2IAdapterUnit
from easel_controlnet.hint import (
    decode_image,
    fit_to_target,
    image_array,
    mask_array,
    pixel_perfect_resolution,
)
from easel_controlnet.inject import ActiveUnit
from easel_controlnet.library import ControlNetCache, Folders, ModelEntry, find_model
from easel_controlnet.preprocessors import (
    CLIP_MODULES,
    IP_ADAPTER_MODULES,
    STYLE_MODULE,
    get_preprocessor,
    run_preprocessor,
    ui_label,
)
from easel_controlnet.units import ControlNetUnit
from modules.models.errors import ModelLoadError
from modules.models.ip_adapter_files import (
    CLIP_VISION_FOLDER,
    ENCODER_SUFFIXES,
    encoder_sizes,
    find_clip_vision,
)
from modules.nn.configs import UNetConfig
from modules.nn.ip_adapter import clip_pixels, encode_reference
from modules.nn.t2i_adapter import StyleAdapter


@dataclass(frozen=True)
class Target:
    """Where and for what the hint is made: size, model folders, base U-Net, device."""

    width: int
    height: int
    model_dir: Folders  # `Paths.controlnet_dirs`
    annotator_dir: Path | None
    base: UNetConfig
    device: torch.device
    dtype: torch.dtype
    seed: int = 0
    clip_vision_dir: Path | None = None  # CLIP image encoders (IP-Adapter, style adapter)


def detect_map(unit: ControlNetUnit, picture: Image.Image, *, annotator_dir: Path | None,
               resolution: int, seed: int = 0) -> np.ndarray:
    """The unit's preprocessor applied to `picture` (mask from the unit, if any)."""
    entry = get_preprocessor(unit.module, annotator_dir)
    mask = None
    if unit.mask is not None:
        mask = mask_array(decode_image(unit.mask, "mask"))
    elif picture.mode == "RGBA" and entry.needs_mask:
        mask = np.asarray(picture.getchannel("A")) < 128  # transparent: to be painted
    return run_preprocessor(entry, image_array(picture), resolution=resolution,
                            a=unit.threshold_a, b=unit.threshold_b, mask=mask, seed=seed)


def unit_resolution(unit: ControlNetUnit, picture: Image.Image, target: Target) -> int:
    """processor_res, or with pixel perfect the one matching the target size."""
    if unit.pixel_perfect:
        return pixel_perfect_resolution(picture.height, picture.width,
                                        target_height=target.height,
                                        target_width=target.width, resize_mode=unit.resize_mode)
    return unit.processor_res


def prepare_unit(unit: ControlNetUnit, target: Target, *, cache: ControlNetCache,
                 fallback: Image.Image | None = None
                 ) -> tuple[ActiveUnit | AdapterUnit, np.ndarray | None]:
    """Load the model and build the hint (or image tokens); errors name the unit's field.

    Returns the unit ready for `ControlStepHook` and the detected map (None for the CLIP
    modules, which make no picture)."""
    if unit.image is not None:
        picture = decode_image(unit.image)
    elif fallback is not None:
        picture = fallback  # img2img: the init picture, as the extension does
    else:
        raise ValueError("image: an enabled unit needs a picture")
    try:
        entry = find_model(target.model_dir, unit.model, cache.kinds)
    except KeyError as error:
        raise ValueError(f"model: {error.args[0]}") from None
    if entry.kind == "ip_adapter":
        return _prepare_ip_adapter(unit, entry, picture, target, cache), None
    model = cache.get(entry.path, base=target.base, device=target.device, dtype=target.dtype,
                      kind=entry.kind)
    if isinstance(model, StyleAdapter):
        return _prepare_style(unit, entry, model, picture, target, cache), None
    if unit.module in CLIP_MODULES:
        raise ValueError(f"module: {ui_label(unit.module)} makes a CLIP image embedding, for "
                         f"IP-Adapter or the style T2I-Adapter; {entry.name} needs a picture "
                         f"(choose another preprocessor, or none)")
    detected = detect_map(unit, picture, annotator_dir=target.annotator_dir,
                          resolution=unit_resolution(unit, picture, target), seed=target.seed)
    hint = fit_to_target(detected, width=target.width, height=target.height,
                         resize_mode=unit.resize_mode)[None].to(target.device, target.dtype)
    if entry.kind == "t2i_adapter":
        return T2IAdapterUnit(model=model, hint=adapter_hint(hint, model), unet=target.base,
                              weight=unit.weight,
                              guidance_start=unit.guidance_start,
                              guidance_end=unit.guidance_end,
                              control_mode=unit.control_mode), detected
    active = ActiveUnit(model=model, hint=hint, weight=unit.weight,
                        guidance_start=unit.guidance_start,
                        guidance_end=unit.guidance_end, control_mode=unit.control_mode)
    return active, detected


def adapter_hint(hint: torch.Tensor, model) -> torch.Tensor:
    """The hint with the channels the adapter reads: one-channel adapters (sketch, ...)
    take the map's first channel, as the extension feeds them."""
    channels = getattr(model.config, "hint_channels", None) or 3
    return hint[:, :channels] if hint.shape[1] > channels else hint


def _clip_picture(picture: Image.Image) -> Image.Image:
    return Image.fromarray(image_array(picture))  # RGB, transparency on black


def _prepare_ip_adapter(unit: ControlNetUnit, entry: ModelEntry, picture: Image.Image,
                        target: Target, cache: ControlNetCache) -> IPAdapterUnit:
    """The adapter, the image encoder it fits, and the reference's tokens (once)."""
    if unit.module not in IP_ADAPTER_MODULES:
        names = ", ".join(ui_label(m) for m in IP_ADAPTER_MODULES)
        raise ValueError(f"module: the IP-Adapter {entry.name} needs a CLIP preprocessor "
                         f"({names}), not {unit.module!r}")
    adapter = cache.get(entry.path, base=target.base, device=target.device, dtype=target.dtype,
                        kind="ip_adapter")
    encoder_path = find_clip_vision(target.clip_vision_dir, adapter)
    encoder = cache.get(encoder_path, base=target.base, device=target.device,
                        dtype=target.dtype, kind="clip_vision")
    with torch.no_grad():
        cond, uncond = encode_reference(encoder, adapter, _clip_picture(picture))
    return IPAdapterUnit(adapter=adapter, cond_tokens=cond, uncond_tokens=uncond,
                         weight=unit.weight, guidance_start=unit.guidance_start,
                         guidance_end=unit.guidance_end)


def _prepare_style(unit: ControlNetUnit, entry: ModelEntry, model: StyleAdapter,
                   picture: Image.Image, target: Target, cache: ControlNetCache) -> StyleUnit:
    """The style adapter's context tokens from the picture's CLIP image tokens (once)."""
    if unit.module != STYLE_MODULE:
        raise ValueError(f"module: the style T2I-Adapter {entry.name} needs the "
                         f"{ui_label(STYLE_MODULE)} preprocessor, not {unit.module!r}")
    encoder = cache.get(style_encoder(target.clip_vision_dir, model), base=target.base,
                        device=target.device, dtype=target.dtype, kind="clip_vision")
    parameter = next(encoder.parameters())
    pixels = clip_pixels(_clip_picture(picture), int(encoder.config.image_size))
    with torch.no_grad():
        hidden = encoder(pixels.to(parameter.device, parameter.dtype)).last_hidden_state
        tokens = model(hidden)[0]
    return StyleUnit(tokens=tokens, weight=unit.weight, guidance_start=unit.guidance_start,
                     guidance_end=unit.guidance_end)


def style_encoder(folder: Path | None, model: StyleAdapter) -> Path:
    """The CLIP image encoder in `folder` whose hidden states are as wide as the style
    adapter reads (1024: OpenAI's ViT-L/14); a `ModelLoadError` naming the folder."""
    folder = folder if folder is not None else CLIP_VISION_FOLDER
    files = sorted(p for p in folder.glob("*") if p.is_file()
                   and p.suffix.lower() in ENCODER_SUFFIXES) if folder.is_dir() else []
    for path in files:
        try:
            if encoder_sizes(path)[1] == model.config.width:
                return path
        except ModelLoadError:
            continue  # not an image encoder (or damaged): another may fit
    raise ModelLoadError(folder, f"no CLIP image encoder for the style T2I-Adapter in "
                                 f"models/clip_vision ({folder}): it needs a "
                                 f"CLIPVisionModelWithProjection file with hidden size "
                                 f"{model.config.width} (ViT-L/14)")
