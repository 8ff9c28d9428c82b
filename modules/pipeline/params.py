"""Typed generation requests and results, with A1111's field names.

The web UI and the HTTP API both build a `Txt2ImgParams` (with the hires-fix fields) or
an `Img2ImgParams` (init images, mask and inpainting options); `processing.txt2img` and
`img2img.img2img` read nothing else. `validate()` checks every field a user or client can
send and raises a `ParamsError` naming the field and the reason; nothing is silently
clamped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modules.errors import ParamsError, require_number  # ParamsError: re-exported

MAX_SIDE = 8192
MAX_STEPS = 1000
MAX_BATCH = 64
# Characters per prompt field (after styles are merged): A1111 users paste long prompts,
# and 20,000 characters is ~50 times the 75-token chunk's worth of a typical prompt.
MAX_PROMPT_CHARS = 20_000
# Brackets `(` / `[` open inside one another: the schedule parser recurses once per level
# (~3 Python frames each), and real prompts stay under ten.
MAX_PROMPT_NESTING = 100


@dataclass(kw_only=True)
class GenerationParams:
    """The fields txt2img and img2img share (A1111's `StableDiffusionProcessing`)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] = field(default_factory=list)
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 20
    cfg_scale: float = 7.0
    # Flux.1 dev's guidance input (Forge's "Distilled CFG Scale"); other models ignore it.
    distilled_cfg_scale: float = 3.5
    width: int = 512
    height: int = 512
    tiling: bool = False
    restore_faces: bool = False  # face restoration after decode (face_restoration_model)
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    # The refiner (modules/pipeline/refiner.py): a checkpoint that takes over at this fraction.
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    # Scripts (modules/scripts): the selectable one and every always-on one's args.
    script_name: str | None = None
    script_args: list[Any] | dict[str, Any] = field(default_factory=list)
    alwayson_scripts: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        self.validate_common()

    def validate_common(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            _require_int(name, value, 64, MAX_SIDE)
            if value % 8:
                raise ParamsError(name, f"{value} is not a multiple of 8")
        _require_int("steps", self.steps, 1, MAX_STEPS)
        _require_int("batch_size", self.batch_size, 1, MAX_BATCH)
        _require_int("n_iter", self.n_iter, 1, 10_000)
        require_number("cfg_scale", self.cfg_scale, 0.0, 100.0)
        require_number("distilled_cfg_scale", self.distilled_cfg_scale, 0.0, 100.0)
        require_number("subseed_strength", self.subseed_strength, 0.0, 1.0)
        _require_int("seed", self.seed, -1, 2**63 - 1)
        _require_int("subseed", self.subseed, -1, 2**63 - 1)
        for name in ("seed_resize_from_h", "seed_resize_from_w"):
            _require_int(name, getattr(self, name), -1, MAX_SIDE)
        for name in ("prompt", "negative_prompt"):
            require_prompt(name, getattr(self, name))
        for name in ("eta", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise"):
            value = getattr(self, name)
            if value is not None:
                require_number(name, value, 0.0, 1000.0)
        self.validate_refiner()
        if self.script_name is not None and not isinstance(self.script_name, str):
            raise ParamsError("script_name", "must be a string or null")
        if not isinstance(self.script_args, (list, dict)):
            raise ParamsError("script_args", "must be a list or an object")
        if not isinstance(self.alwayson_scripts, dict):
            raise ParamsError("alwayson_scripts", "must be an object")


    def validate_refiner(self) -> None:
        if self.refiner_checkpoint is not None and not isinstance(self.refiner_checkpoint, str):
            raise ParamsError("refiner_checkpoint", "must be a string or null")
        if refiner_name(self.refiner_checkpoint) is None:
            return
        if self.refiner_switch_at is None:
            raise ParamsError("refiner_switch_at",
                              "is required when refiner_checkpoint is set "
                              "(the fraction of sampling after which it takes over)")
        require_number("refiner_switch_at", self.refiner_switch_at, 0.01, 1.0)


NO_REFINER = ("", "None", "none")


def refiner_name(value: str | None) -> str | None:
    """The chosen refiner checkpoint, or None for A1111's spellings of "no refiner"."""
    return None if value is None or value in NO_REFINER else value


def require_prompt(name: str, value: Any) -> None:
    """A prompt field: a string of at most MAX_PROMPT_CHARS characters."""
    if not isinstance(value, str):
        raise ParamsError(name, "must be a string")
    if len(value) > MAX_PROMPT_CHARS:
        raise ParamsError(name, f"{len(value):,} characters is over the limit of "
                                f"{MAX_PROMPT_CHARS:,} per prompt")
    if bracket_depth(value) > MAX_PROMPT_NESTING:
        raise ParamsError(name, f"brackets are nested {bracket_depth(value)} deep; the limit "
                                f"is {MAX_PROMPT_NESTING}")


def bracket_depth(text: str) -> int:
    """How deep `(` and `[` open inside one another (backslash escapes do not count)."""
    depth = deepest = 0
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]" and depth:
            depth -= 1
    return deepest


def _require_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(name, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise ParamsError(name, f"{value} is outside [{low}, {high}]")


LATENT_UPSCALE_MODES: tuple[str, ...] = (
    "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
    "Latent (nearest)", "Latent (nearest-exact)",
)
RESIZE_MODES: tuple[str, ...] = ("Just resize", "Crop and resize", "Resize and fill",
                                 "Just resize (latent upscale)")
MASKED_CONTENT: tuple[str, ...] = ("fill", "original", "latent noise", "latent nothing")
MAX_HIRES_SCALE = 8.0


@dataclass(kw_only=True)
class Txt2ImgParams(GenerationParams):
    """One txt2img request (A1111's `StableDiffusionProcessingTxt2Img` fields).

    The `hr_*` fields describe the hires-fix second pass; `denoising_strength` is only
    read (and then required) when `enable_hr` is set. `hr_upscaler` names a latent mode
    or an upscaler; it is checked against the installed upscalers when the job starts.
    """

    enable_hr: bool = False
    denoising_strength: float | None = None
    hr_scale: float = 2.0
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_distilled_cfg: float = 3.5  # the hires pass's distilled CFG scale (Flux.1 dev)
    # A finished picture (PIL) to run the hires pass on instead of a first pass (A1111's ✨).
    firstpass_image: Any = None

    def validate(self) -> None:
        self.validate_common()
        for name in ("enable_hr",):
            if not isinstance(getattr(self, name), bool):
                raise ParamsError(name, "expected true or false")
        self.validate_firstpass_image()
        if not self.enable_hr:
            return
        if self.denoising_strength is None:
            raise ParamsError("denoising_strength", "is required when enable_hr is true")
        require_number("denoising_strength", self.denoising_strength, 0.0, 1.0)
        require_number("hr_scale", self.hr_scale, 1.0, MAX_HIRES_SCALE)
        require_number("hr_distilled_cfg", self.hr_distilled_cfg, 0.0, 100.0)
        _require_int("hr_second_pass_steps", self.hr_second_pass_steps, 0, MAX_STEPS)
        for name in ("hr_resize_x", "hr_resize_y"):
            _require_int(name, getattr(self, name), 0, MAX_SIDE)
        if not isinstance(self.hr_upscaler, str):
            raise ParamsError("hr_upscaler", "must be a string")
        for name in ("hr_prompt", "hr_negative_prompt"):
            require_prompt(name, getattr(self, name))
        for name in ("hr_checkpoint_name", "hr_sampler_name", "hr_scheduler"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ParamsError(name, "must be a string or null")
        width, height, _, _ = hires_size(self)
        for name, value in (("hr_resize_x", width), ("hr_resize_y", height)):
            if not 64 <= value <= MAX_SIDE:
                raise ParamsError(name, f"the hires size {width}x{height} is outside "
                                        f"[64, {MAX_SIDE}]")


    def validate_firstpass_image(self) -> None:
        image = self.firstpass_image
        if image is None:
            return
        if not self.enable_hr:
            raise ParamsError("firstpass_image", "is the input of the hires pass: set enable_hr")
        if not hasattr(image, "size") or not hasattr(image, "convert"):
            raise ParamsError("firstpass_image", "must be an image")
        if tuple(image.size) != (self.width, self.height):
            raise ParamsError("firstpass_image",
                              f"is {image.size[0]}x{image.size[1]}, but width x height "
                              f"is {self.width}x{self.height}")


def hires_size(p: Txt2ImgParams, factor: int = 8) -> tuple[int, int, int, int]:
    """(upscale-to width, height, truncate_x, truncate_y) of the hires pass (A1111's rule).

    With neither resize field, the first pass is scaled by `hr_scale`. With one, the
    other follows the aspect ratio. With both, the image is scaled to cover the box and
    the latent is later cropped by `truncate_*` latent pixels to fit it exactly.
    """
    if p.hr_resize_x == 0 and p.hr_resize_y == 0:
        return int(p.width * p.hr_scale), int(p.height * p.hr_scale), 0, 0
    if p.hr_resize_y == 0:
        return p.hr_resize_x, p.hr_resize_x * p.height // p.width, 0, 0
    if p.hr_resize_x == 0:
        return p.hr_resize_y * p.width // p.height, p.hr_resize_y, 0, 0
    if p.width / p.height < p.hr_resize_x / p.hr_resize_y:
        width, height = p.hr_resize_x, p.hr_resize_x * p.height // p.width
    else:
        width, height = p.hr_resize_y * p.width // p.height, p.hr_resize_y
    return width, height, (width - p.hr_resize_x) // factor, (height - p.hr_resize_y) // factor


@dataclass(kw_only=True)
class Img2ImgParams(GenerationParams):
    """One img2img / inpainting request (A1111's `StableDiffusionProcessingImg2Img`).

    `init_images` and `mask` are PIL images (the API decodes base64 first). A mask is
    white where the picture is repainted; without one, an RGBA init image's transparent
    pixels are the mask. `scale_by`, when set, replaces width/height by the first init
    image's size times the factor (rounded down to a multiple of 8).
    """

    init_images: list[Any] = field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float | None = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_round: bool = True
    inpainting_fill: int = 1
    inpaint_full_res: bool = False
    inpaint_full_res_padding: int = 32
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    scale_by: float | None = None

    def validate(self) -> None:
        self.validate_common()
        if not isinstance(self.init_images, list) or not self.init_images:
            raise ParamsError("init_images", "at least one image is required")
        for image in self.init_images:
            if not _is_image(image):
                raise ParamsError("init_images", f"expected images, got {type(image).__name__}")
        if self.mask is not None and not _is_image(self.mask):
            raise ParamsError("mask", f"expected an image, got {type(self.mask).__name__}")
        _require_int("resize_mode", self.resize_mode, 0, len(RESIZE_MODES) - 1)
        require_number("denoising_strength", self.denoising_strength, 0.0, 1.0)
        for name in ("mask_blur_x", "mask_blur_y"):
            _require_int(name, getattr(self, name), 0, 64)
        _require_int("inpainting_fill", self.inpainting_fill, 0, len(MASKED_CONTENT) - 1)
        _require_int("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, 1024)
        _require_int("inpainting_mask_invert", self.inpainting_mask_invert, 0, 1)
        for name in ("mask_round", "inpaint_full_res"):
            if not isinstance(getattr(self, name), bool):
                raise ParamsError(name, "expected true or false")
        if self.initial_noise_multiplier is not None:
            require_number("initial_noise_multiplier", self.initial_noise_multiplier, 0.0, 1.5)
        if self.image_cfg_scale is not None:
            require_number("image_cfg_scale", self.image_cfg_scale, 0.0, 100.0)
        if self.scale_by is not None:
            require_number("scale_by", self.scale_by, 0.05, 4.0)


def _is_image(value: Any) -> bool:
    return hasattr(value, "size") and hasattr(value, "convert") and hasattr(value, "mode")


@dataclass(kw_only=True)
class GenerationResult:
    """What a finished job returns: images, their infotexts and where they were saved."""

    images: list[Any]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    prompts: list[str]
    negative_prompts: list[str]
    saved_paths: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
