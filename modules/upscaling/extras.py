"""Extras tab / `extra-single-image` / `extra-batch-images`: upscaling after the fact.

A1111's "Upscale" postprocessing (docs/a1111-semantics.md, "Extras upscaling"): "Scale by" a factor,
or "Scale to" width x height (the factor that covers the box, then an optional centre crop to
exactly that size); "Upscaler 1", and "Upscaler 2" blended over it with a visibility
weight. Upscaler 1 "None" leaves the image as it is. Then, in A1111's order, face
restoration: GFPGAN blended over the picture by `gfpgan_visibility`, then CodeFormer
(fidelity `codeformer_weight`) by `codeformer_visibility` (`face_registry.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from modules.errors import ParamsError, require_number
from modules.imaging.decode import DEFAULT_MAX_INPUT_PIXELS
from modules.upscaling.face_registry import FaceRestorers
from modules.upscaling.registry import UpscalerRegistry


@dataclass(kw_only=True)
class ExtrasParams:
    """A1111's `ExtrasBaseRequest` fields (resize_mode 0: by factor, 1: to w x h)."""

    resize_mode: int = 0
    upscaling_resize: float = 2.0
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0.0
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    codeformer_weight: float = 0.0

    def validate(self, names: list[str]) -> None:
        if self.resize_mode not in (0, 1):
            raise ParamsError("resize_mode", f"must be 0 (scale by) or 1 (scale to), "
                                             f"got {self.resize_mode!r}")
        require_number("upscaling_resize", self.upscaling_resize, 0.01, 16.0)
        for name in ("upscaling_resize_w", "upscaling_resize_h"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 16384:
                raise ParamsError(name, f"{value!r} is outside [1, 16384]")
        require_number("extras_upscaler_2_visibility", self.extras_upscaler_2_visibility, 0, 1)
        for name in ("upscaler_1", "upscaler_2"):
            if getattr(self, name) not in names:
                raise ParamsError(name, f"unknown upscaler {getattr(self, name)!r}; "
                                        f"available: {', '.join(names)}")
        for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
            require_number(name, getattr(self, name), 0, 1)


def _upscale(registry: UpscalerRegistry, image: Image.Image, name: str, p: ExtrasParams,
             settings, info: dict, max_pixels: int) -> Image.Image:
    if p.resize_mode == 1:
        scale = max(p.upscaling_resize_w / image.width, p.upscaling_resize_h / image.height)
        info["Postprocess upscale to"] = f"{p.upscaling_resize_w}x{p.upscaling_resize_h}"
    else:
        scale = p.upscaling_resize
        info["Postprocess upscale by"] = scale
    _check_result_size(image, scale, p, max_pixels)
    image = registry.upscale(image, scale, name, settings)
    if p.resize_mode == 1 and p.upscaling_crop:
        width, height = p.upscaling_resize_w, p.upscaling_resize_h
        cropped = Image.new("RGB", (width, height))
        cropped.paste(image, box=(width // 2 - image.width // 2, height // 2 - image.height // 2))
        image = cropped
        info["Postprocess crop to"] = f"{width}x{height}"
    return image


def _check_result_size(image: Image.Image, scale: float, p: ExtrasParams,
                       max_pixels: int) -> None:
    """Upscalers round the result down to multiples of 8 px: under 8 px is refused; so is
    a result of more than `max_pixels` pixels (the largest picture a client may send)."""
    width, height = int(image.width * scale), int(image.height * scale)
    if width * height > max_pixels:
        field = "upscaling_resize" if p.resize_mode == 0 else "upscaling_resize_w"
        raise ParamsError(field, f"the result would be {width}x{height} ({width * height:,} "
                                 f"pixels), over the limit of {max_pixels:,} pixels "
                                 f"(--max-input-image-pixels)")
    for side, length in (("w", image.width), ("h", image.height)):
        if int(length * scale) < 8:
            field = "upscaling_resize" if p.resize_mode == 0 else f"upscaling_resize_{side}"
            raise ParamsError(field, f"the result would be {int(length * scale)} px "
                                     f"{'wide' if side == 'w' else 'high'} (the image is "
                                     f"{image.width}x{image.height}); at least 8 px is needed")


def _restore_faces(faces: FaceRestorers | None, image: Image.Image, p: ExtrasParams,
                   info: dict) -> Image.Image:
    """A1111's GFPGAN then CodeFormer postprocessing, each blended by its visibility."""
    steps = (("GFPGAN", p.gfpgan_visibility, 0.5), ("CodeFormer", p.codeformer_visibility,
                                                    p.codeformer_weight))
    for name, visibility, weight in steps:
        if visibility <= 0:
            continue
        if faces is None:
            raise ParamsError(f"{name.lower()}_visibility", "face restoration is not "
                                                            "available here")
        image = faces.apply(image, name, weight=weight, visibility=visibility)
        info[f"{name} visibility"] = visibility
        if name == "CodeFormer":
            info["CodeFormer weight"] = weight
    return image


def run_extras(registry: UpscalerRegistry, image: Image.Image, p: ExtrasParams,
               settings, *, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
               faces: FaceRestorers | None = None) -> tuple[Image.Image, dict]:
    """One image through the upscale step, then face restoration (`faces`, when the
    visibilities ask for it); returns it and its info entries. A result over
    `max_pixels` pixels is refused before upscaling."""
    p.validate(registry.names())
    info: dict = {}
    image = image.convert("RGB")
    if p.upscaler_1 == "None":
        return _restore_faces(faces, image, p, info), info
    first = _upscale(registry, image, p.upscaler_1, p, settings, info, max_pixels)
    info["Postprocess upscaler"] = p.upscaler_1
    if p.upscaler_2 != "None" and p.extras_upscaler_2_visibility > 0:
        second = _upscale(registry, image, p.upscaler_2, p, settings, info, max_pixels)
        if second.size != first.size:
            second = second.resize(first.size, resample=Image.Resampling.LANCZOS)
        first = Image.blend(first, second, p.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = p.upscaler_2
        info["Postprocess upscaler 2 visibility"] = p.extras_upscaler_2_visibility
    return _restore_faces(faces, first, p, info), info


def run_extras_batch(registry: UpscalerRegistry, images: list[Image.Image], p: ExtrasParams,
                     settings, *, max_pixels: int = DEFAULT_MAX_INPUT_PIXELS,
                     faces: FaceRestorers | None = None) -> tuple[list[Image.Image], dict]:
    results, info = [], {}
    for image in images:
        result, info = run_extras(registry, image, p, settings, max_pixels=max_pixels,
                                  faces=faces)
        results.append(result)
    return results, info


def info_html(info: dict) -> str:
    """The `html_info` of A1111's extras answers: the info entries as one paragraph."""
    text = ", ".join(f"{key}: {value}" for key, value in info.items())
    return f"<p>{text}</p>"
