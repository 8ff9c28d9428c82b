"""One validated unit -> an `ActiveUnit` (model loaded, picture preprocessed and fitted).

Kept apart from the script so that the API's `/controlnet/detect` and tests run the
same preprocessing: `detect_map` is the picture -> control map part, `prepare_unit`
adds the resize to the generation size and the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from easel_controlnet.hint import (
    decode_image,
    fit_to_target,
    image_array,
    mask_array,
    pixel_perfect_resolution,
)
from easel_controlnet.inject import ActiveUnit
from easel_controlnet.library import ControlNetCache, find_model
from easel_controlnet.preprocessors import get_preprocessor, run_preprocessor
from easel_controlnet.units import ControlNetUnit
from modules.nn.configs import UNetConfig


@dataclass(frozen=True)
class Target:
    """Where and for what the hint is made: size, model folders, base U-Net, device."""

    width: int
    height: int
    model_dir: Path | None
    annotator_dir: Path | None
    base: UNetConfig
    device: torch.device
    dtype: torch.dtype
    seed: int = 0


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
                 fallback: Image.Image | None = None) -> tuple[ActiveUnit, np.ndarray]:
    """Load the model and build the hint; errors name the unit's field."""
    if unit.image is not None:
        picture = decode_image(unit.image)
    elif fallback is not None:
        picture = fallback  # img2img: the init picture, as the extension does
    else:
        raise ValueError("image: an enabled unit needs a picture")
    try:
        entry = find_model(target.model_dir, unit.model)
    except KeyError as error:
        raise ValueError(f"model: {error.args[0]}") from None
    model = cache.get(entry.path, base=target.base, device=target.device, dtype=target.dtype)
    detected = detect_map(unit, picture, annotator_dir=target.annotator_dir,
                          resolution=unit_resolution(unit, picture, target), seed=target.seed)
    hint = fit_to_target(detected, width=target.width, height=target.height,
                         resize_mode=unit.resize_mode)
    active = ActiveUnit(model=model, hint=hint[None].to(target.device, target.dtype),
                        weight=unit.weight, guidance_start=unit.guidance_start,
                        guidance_end=unit.guidance_end, control_mode=unit.control_mode)
    return active, detected
