"""Preprocessors ("annotators"): input picture -> the control map a ControlNet was trained on.

The model-free ones are written here in NumPy/SciPy/PIL: none, invert, canny, threshold,
binary, scribble_xdog, color, shuffle, tile_resample, blur_gaussian and the inpaint
mask. Their names, slider meanings and defaults are those of the ControlNet extension
(so API clients' `module`, `threshold_a`, `threshold_b` mean the same), the code is ours.

Preprocessors built on networks (depth, pose, HED, line art, ...) are listed with the
weight files they need under `models/ControlNet/annotators/`; nothing is downloaded.
Choosing one reports which file is missing, or that its network is not built in yet.

Every preprocessor takes an (H, W, 3) uint8 RGB picture and returns an (h, w, 3)
float32 map in [0, 1] (the inpaint map also uses -1 for "to be painted").

The CLIP ones (`clip_vision`, shown as "t2ia_style_clipvision", for the style
T2I-Adapter; `ip-adapter_clip_*` for IP-Adapter) make no picture: the unit's picture goes
through a CLIP image encoder from `models/clip_vision/` (`embeds=True`; `prepare.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from easel_controlnet.canny import canny

DEFAULT_RESOLUTION = 512


@dataclass(frozen=True)
class Slider:
    """What threshold_a / threshold_b mean for one preprocessor."""

    label: str
    default: float
    minimum: float
    maximum: float


@dataclass(frozen=True)
class Inputs:
    """One preprocessor call: picture, resolution, thresholds, optional mask, seed."""

    image: np.ndarray  # (H, W, 3) uint8
    resolution: int
    a: float
    b: float
    mask: np.ndarray | None = None  # (H, W) bool, True where to inpaint
    seed: int = 0


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[[Inputs], np.ndarray] | None  # None: needs a network not built in
    uses_resolution: bool = True
    slider_a: Slider | None = None
    slider_b: Slider | None = None
    files: tuple[str, ...] = ()  # annotator weights under models/ControlNet/annotators/
    needs_mask: bool = False
    embeds: bool = False  # a CLIP image encoder's embedding, not a picture (module docstring)


class PreprocessorError(ValueError):
    """A preprocessor that cannot run: unknown, missing weights, missing mask."""


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """Scale so the short side is `resolution`, both sides rounded to multiples of 64."""
    height, width = image.shape[:2]
    k = resolution / min(height, width)
    size = (max(64, round(width * k / 64) * 64), max(64, round(height * k / 64) * 64))
    if size == (width, height):
        return image
    method = Image.Resampling.LANCZOS if k > 1 else Image.Resampling.BOX
    return np.asarray(Image.fromarray(image).resize(size, method))


def _gray(image: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(image).convert("L"), dtype=np.float32)


def _rgb(single: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) float32."""
    return np.repeat(single.astype(np.float32)[..., None], 3, axis=2)


def _otsu(gray: np.ndarray) -> float:
    """Otsu's (1979) threshold: the one maximising the between-class variance."""
    histogram = np.bincount(gray.astype(np.uint8).ravel(), minlength=256).astype(np.float64)
    weights = np.cumsum(histogram)
    means = np.cumsum(histogram * np.arange(256))
    total, total_mean = weights[-1], means[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weights - means * total) ** 2 / (weights * (total - weights))
    return float(np.nanargmax(np.nan_to_num(between, nan=-1.0)))


def _none(p: Inputs) -> np.ndarray:
    return p.image.astype(np.float32) / 255.0


def _invert(p: Inputs) -> np.ndarray:
    return (255 - p.image).astype(np.float32) / 255.0


def _canny(p: Inputs) -> np.ndarray:
    return _rgb(canny(p.image, p.a, p.b))


def _threshold(p: Inputs) -> np.ndarray:
    return _rgb(_gray(p.image) > p.a)


def _binary(p: Inputs) -> np.ndarray:
    """Dark strokes become white: gray <= threshold (Otsu's when 0 or 255)."""
    gray = _gray(p.image)
    threshold = _otsu(gray) if p.a in (0, 255) else p.a
    return _rgb(gray <= threshold)


def _scribble_xdog(p: Inputs) -> np.ndarray:
    """Difference of Gaussians (sigma 0.5 vs 5), thresholded at `a`: a scribble."""
    image = p.image.astype(np.float32)
    fine = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0))
    coarse = ndimage.gaussian_filter(image, sigma=(5.0, 5.0, 0))
    dog = np.clip(255 - np.min(coarse - fine, axis=2), 0, 255)
    return _rgb(2 * (255 - dog) > p.a)


def _color(p: Inputs) -> np.ndarray:
    """A palette: cubic shrink by 64, nearest-neighbour back to size."""
    height, width = p.image.shape[:2]
    small = Image.fromarray(p.image).resize((max(1, width // 64), max(1, height // 64)),
                                            Image.Resampling.BICUBIC)
    return np.asarray(small.resize((width, height), Image.Resampling.NEAREST),
                      dtype=np.float32) / 255.0


def _smooth_noise(height: int, width: int, rng: np.random.Generator, cell: int = 256
                  ) -> np.ndarray:
    """Uniform noise on a coarse grid, cubic-upsampled, cropped, scaled to [0, 1]."""
    grid = rng.random((height // cell + 2, width // cell + 2))
    fine = ndimage.zoom(grid, cell, order=3)
    fine = fine[cell:cell + height, cell:cell + width]
    fine = fine - fine.min()
    return fine / max(float(fine.max()), 1e-8)


def _shuffle(p: Inputs) -> np.ndarray:
    """Content shuffle: sample the picture at smoothly random coordinates (seeded)."""
    height, width = p.image.shape[:2]
    rng = np.random.default_rng(p.seed)
    xs = _smooth_noise(height, width, rng) * (width - 1)
    ys = _smooth_noise(height, width, rng) * (height - 1)
    image = p.image.astype(np.float32)
    out = np.stack([ndimage.map_coordinates(image[..., c], [ys, xs], order=1, mode="nearest")
                    for c in range(3)], axis=2)
    return out / 255.0


def _tile_resample(p: Inputs) -> np.ndarray:
    """Down-sample by the rate `a` (1: unchanged), keeping detail for the tile model."""
    if p.a <= 1:
        return p.image.astype(np.float32) / 255.0
    height, width = p.image.shape[:2]
    size = (max(1, int(width / p.a)), max(1, int(height / p.a)))
    return np.asarray(Image.fromarray(p.image).resize(size, Image.Resampling.BOX),
                      dtype=np.float32) / 255.0


def _blur_gaussian(p: Inputs) -> np.ndarray:
    return ndimage.gaussian_filter(p.image.astype(np.float32), sigma=(p.a, p.a, 0)) / 255.0


def _inpaint(p: Inputs) -> np.ndarray:
    """The picture with the masked pixels set to -1 (the inpaint model's "paint here")."""
    if p.mask is None:
        raise PreprocessorError("the inpaint preprocessor needs a mask (unit `mask`, or "
                                "`image` as {image, mask})")
    out = p.image.astype(np.float32) / 255.0
    out[p.mask] = -1.0
    return out


def all_preprocessors() -> dict[str, Preprocessor]:
    """Every preprocessor by name (built on each call: no module-level state)."""
    low = Slider("Low Threshold", 100, 1, 255)
    high = Slider("High Threshold", 200, 1, 255)
    entries = [
        Preprocessor("none", _none, uses_resolution=False),
        Preprocessor("invert", _invert),
        Preprocessor("canny", _canny, slider_a=low, slider_b=high),
        Preprocessor("threshold", _threshold,
                     slider_a=Slider("Binarization Threshold", 127, 0, 255)),
        Preprocessor("binary", _binary, slider_a=Slider("Binary threshold", 0, 0, 255)),
        Preprocessor("scribble_xdog", _scribble_xdog, slider_a=Slider("XDoG Threshold", 32, 1, 64)),
        Preprocessor("color", _color),
        Preprocessor("shuffle", _shuffle),
        Preprocessor("tile_resample", _tile_resample,
                     slider_a=Slider("Down Sampling Rate", 1.0, 1.0, 8.0)),
        Preprocessor("blur_gaussian", _blur_gaussian, slider_a=Slider("Sigma", 9.0, 0.01, 64.0)),
        Preprocessor("inpaint", _inpaint, uses_resolution=False, needs_mask=True),
        Preprocessor("inpaint_global_harmonious", _inpaint, uses_resolution=False,
                     needs_mask=True),
    ]
    weights = {
        "depth_midas": ("dpt_hybrid-midas-501f0c75.pt",), "depth_zoe": ("ZoeD_M12_N.pt",),
        "depth_leres": ("res101.pth",), "normal_bae": ("scannet.pt",),
        "openpose": ("body_pose_model.pth",),
        "openpose_full": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
        "softedge_hed": ("ControlNetHED.pth",), "scribble_hed": ("ControlNetHED.pth",),
        "softedge_pidinet": ("table5_pidinet.pth",), "mlsd": ("mlsd_large_512_fp32.pth",),
        "lineart_realistic": ("sk_model.pth",), "lineart_coarse": ("sk_model2.pth",),
        "lineart_anime": ("netG.pth",), "seg_ufade20k": ("upernet_global_small.pth",),
    }
    entries += [Preprocessor(name, None, files=files) for name, files in weights.items()]
    entries.append(Preprocessor("pidinet_sketch", None, uses_resolution=False,
                                files=("table5_pidinet.pth",)))
    entries += [Preprocessor(name, None, uses_resolution=False, embeds=True)
                for name in CLIP_MODULES]
    return {entry.name: entry for entry in entries}


# The ControlNet extension's other spellings of our modules: its UI labels (what
# `module_list?alias_names=true` and the web UI show) and its older internal keys.
UI_LABELS = {"invert": "invert (from white bg & black line)", "color": "t2ia_color_grid",
             "pidinet_sketch": "t2ia_sketch_pidi", "clip_vision": "t2ia_style_clipvision",
             "ip-adapter_clip_sd15": "ip-adapter_clip_h",
             "ip-adapter_clip_sdxl": "ip-adapter_clip_g"}
# CLIP image-encoder modules: the style T2I-Adapter's, then IP-Adapter's (`embeds=True`)
STYLE_MODULE = "clip_vision"
IP_ADAPTER_MODULES = ("ip-adapter_clip_sd15", "ip-adapter_clip_sdxl",
                      "ip-adapter_clip_sdxl_plus_vith")
CLIP_MODULES = (STYLE_MODULE, *IP_ADAPTER_MODULES)
LEGACY_KEYS = {"depth": "depth_midas", "hed": "softedge_hed", "pidinet": "softedge_pidinet",
               "lineart": "lineart_realistic", "segmentation": "seg_ufade20k"}


def canonical_module(name: str) -> str:
    """Our name for `name` when it is one of the extension's labels or keys, else `name`."""
    labels = {label: module for module, label in UI_LABELS.items()}
    return labels.get(name, LEGACY_KEYS.get(name, name))


def ui_label(name: str) -> str:
    """The extension's UI label of our module `name`."""
    return UI_LABELS.get(name, name)


def preprocessor_names() -> tuple[str, ...]:
    """Every known module name, model-free ones first (the API's module_list)."""
    return tuple(all_preprocessors())


def get_preprocessor(name: str, annotator_dir: Path | None) -> Preprocessor:
    """The named preprocessor, ready to run, or a `PreprocessorError` saying why not."""
    entry = all_preprocessors().get(canonical_module(name))
    if entry is None:
        raise PreprocessorError(f"unknown preprocessor {name!r}")
    if entry.run is None and not entry.embeds:
        folder = (annotator_dir if annotator_dir is not None
                  else Path("models/ControlNet/annotators"))
        missing = [f for f in entry.files if not (folder / f).is_file()]
        if missing:
            raise PreprocessorError(
                f"preprocessor {name!r} needs {', '.join(missing)} in {folder} (from the "
                f"lllyasviel/Annotators repository); Easel downloads nothing")
        raise PreprocessorError(f"preprocessor {name!r}: its weights are present but its "
                                f"network is not built into Easel yet")
    return entry


def run_preprocessor(entry: Preprocessor, image: np.ndarray, *, resolution: int = -1,
                     a: float = -1, b: float = -1, mask: np.ndarray | None = None,
                     seed: int = 0) -> np.ndarray:
    """Apply `entry`; -1 values take the preprocessor's defaults (as the extension does)."""
    if entry.run is None:
        raise PreprocessorError(f"preprocessor {entry.name!r} makes a CLIP image embedding, "
                                f"not a picture")
    resolution = DEFAULT_RESOLUTION if resolution is None or resolution < 0 else int(resolution)
    a = entry.slider_a.default if entry.slider_a is not None and a == -1 else a
    b = entry.slider_b.default if entry.slider_b is not None and b == -1 else b
    if entry.uses_resolution:
        image = resize_short_side(image, resolution)
    if mask is not None and mask.shape != image.shape[:2]:
        mask = np.asarray(Image.fromarray(mask).resize(image.shape[1::-1],
                                                       Image.Resampling.NEAREST))
    return entry.run(Inputs(image=image, resolution=resolution, a=a, b=b, mask=mask, seed=seed))
