"""Build and parse the A1111 "parameters" infotext stored with every generated image.

The infotext is the interchange format of the SD community: A1111 users paste it into
"PNG Info" or send it through ``/sdapi/v1/png-info``, and sites such as Civitai parse it.
So both directions follow A1111 v1.10.1 byte for byte (docs/a1111-semantics.md, "Infotext"):

    <prompt>
    Negative prompt: <negative>          (omitted when empty)
    Steps: 20, Sampler: Euler a, ...     (one line, ", "-joined)

Building: ``GenerationInfo.core_params`` turns typed fields into the fixed leading
keys, ``ordered_params`` appends the extra keys in A1111's emission order, and
``build_infotext`` formats the text (numbers keep their Python repr, so ``CFG scale: 7``
from the UI and ``7.0`` from the API both round-trip as sent).

Parsing: ``parse_infotext`` returns A1111's dict of strings plus its defaults and
version back-compat keys; `modules/pipeline/infotext_fields.py` maps it onto API
request fields and settings.
Not done here: style inference (needs the styles database) and extension hooks.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from packaging.version import InvalidVersion, Version

# The fixed leading keys of A1111's create_infotext, in emission order.
CORE_KEYS: tuple[str, ...] = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed",
    "Face restoration", "Size", "Model hash", "Model", "FP8 weight",
    "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio",
    "Token merging ratio hr", "Init image hash", "RNG", "Tiling",
)

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# key: a word char then word chars, spaces, '-' or '/'; value: a JSON string or no commas.
PARAM_PATTERN = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
MIN_PARAMS_ON_LAST_LINE = 3


def quote(value: Any) -> str:
    """A value as written in the params line: JSON-quoted if it has ',', newline or ':'."""
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    """Undo ``quote`` for a double-quoted value; other text (or bad JSON) is returned as is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Format prompt, negative prompt and params exactly as A1111 does."""
    entries = [key if key == value else f"{key}: {quote(value)}"
               for key, value in params.items() if value is not None]
    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{', '.join(entries)}".strip()


def ordered_params(core: Mapping[str, Any], extra: Mapping[str, Any], version: str | None = None,
                   user: str | None = None) -> dict[str, Any]:
    """Core keys in A1111's fixed order, then extras, then Version and User.

    An extra key that is already a core key keeps the core position but takes the extra
    value (e.g. the sampler's effective ``Schedule type``). Unknown core keys are a bug
    in the caller and raise ``KeyError``.
    """
    unknown = [key for key in core if key not in CORE_KEYS]
    if unknown:
        raise KeyError(f"not infotext core keys: {unknown}; pass them as extra params")
    params: dict[str, Any] = {key: core.get(key) for key in CORE_KEYS}
    params.update(extra)
    params["Version"] = version
    params["User"] = user
    return params


@dataclass(frozen=True, kw_only=True)
class GenerationInfo:
    """Typed per-image fields behind the core infotext keys (A1111's rules for omission)."""

    steps: int
    sampler_name: str
    cfg_scale: float
    seed: int
    width: int
    height: int
    scheduler: str | None = None
    image_cfg_scale: float | None = None
    face_restoration: str | None = None
    model_hash: str | None = None
    model_name: str | None = None
    fp8_weight: str | None = None
    cache_fp16_weight: bool | None = None
    vae_hash: str | None = None
    vae_name: str | None = None
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_w: int = 0
    seed_resize_from_h: int = 0
    denoising_strength: float | None = None
    conditional_mask_weight: float | None = None
    clip_skip: int = 1
    eta_noise_seed_delta: int = 0
    sampler_uses_ensd: bool = False  # the sampler has uses_ensd and eta != 0
    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0
    init_image_hash: str | None = None
    randn_source: str = "GPU"
    tiling: bool = False

    def core_params(self) -> dict[str, Any]:
        """The core keys with None for every key A1111 leaves out for these values."""
        has_variation = self.subseed_strength != 0
        resized = self.seed_resize_from_w > 0 and self.seed_resize_from_h > 0
        uses_ensd = self.eta_noise_seed_delta != 0 and self.sampler_uses_ensd
        return {
            "Steps": self.steps, "Sampler": self.sampler_name, "Schedule type": self.scheduler,
            "CFG scale": self.cfg_scale, "Image CFG scale": self.image_cfg_scale,
            "Seed": self.seed, "Face restoration": self.face_restoration,
            "Size": f"{self.width}x{self.height}",
            "Model hash": self.model_hash, "Model": self.model_name,
            "FP8 weight": self.fp8_weight, "Cache FP16 weight for LoRA": self.cache_fp16_weight,
            "VAE hash": self.vae_hash, "VAE": self.vae_name,
            "Variation seed": self.subseed if has_variation else None,
            "Variation seed strength": self.subseed_strength if has_variation else None,
            "Seed resize from":
                f"{self.seed_resize_from_w}x{self.seed_resize_from_h}" if resized else None,
            "Denoising strength": self.denoising_strength,
            "Conditional mask weight": self.conditional_mask_weight,
            "Clip skip": self.clip_skip if self.clip_skip > 1 else None,
            "ENSD": self.eta_noise_seed_delta if uses_ensd else None,
            "Token merging ratio": self.token_merging_ratio or None,
            "Token merging ratio hr": self.token_merging_ratio_hr or None,
            "Init image hash": self.init_image_hash,
            "RNG": self.randn_source if self.randn_source != "GPU" else None,
            "Tiling": "True" if self.tiling else None,
        }


def create_infotext(info: GenerationInfo, *, prompt: str, negative_prompt: str = "",
                    extra: Mapping[str, Any] | None = None, version: str | None = None,
                    user: str | None = None) -> str:
    """The full infotext of one image from typed fields and the extra params."""
    params = ordered_params(info.core_params(), extra or {}, version=version, user=user)
    return build_infotext(prompt, negative_prompt, params)


# ---------------------------------------------------------------------------- parsing

# Filled in when missing (A1111 parse_generation_parameters), after the raw parse.
PARSE_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("Clip skip", "1"), ("Hires resize-1", 0), ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"), ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"), ("Hires prompt", ""),
    ("Hires negative prompt", ""), ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"), ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
LATE_PARSE_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("RNG", "GPU"), ("Schedule type", "Automatic"), ("Schedule max sigma", 0),
    ("Schedule min sigma", 0), ("Schedule rho", 0), ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"), ("FP8 weight", "Disable"),
)

VERSION_1_6_0 = Version("1.6.0")
VERSION_TSNR = Version("1.7.0.post225")  # v1.7.0-225: alphas_cumprod no longer downcast
VERSION_1_8_0 = Version("1.8.0")


def split_prompt_lines(lines: Iterable[str]) -> tuple[str, str]:
    """Prompt lines until one starts with "Negative prompt:", the rest are negative."""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX):].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative)


def parse_params_line(line: str) -> dict[str, Any]:
    """``Key: value`` pairs of a params line; ``WxH`` values split into ``Key-1``/``Key-2``."""
    result: dict[str, Any] = {}
    for key, value in PARAM_PATTERN.findall(line):
        if not value:
            continue  # upstream fails on an empty value and skips the key
        value = unquote(value)
        size = SIZE_PATTERN.match(value)
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
        else:
            result[key] = value
    return result


def parse_infotext_raw(text: str) -> dict[str, Any]:
    """Prompt, negative prompt and params, before any defaults (c.4 steps 1-4)."""
    *lines, last_line = text.strip().split("\n")
    if len(PARAM_PATTERN.findall(last_line)) < MIN_PARAMS_ON_LAST_LINE:
        lines.append(last_line)
        last_line = ""
    prompt, negative = split_prompt_lines(lines)
    result = {"Prompt": prompt, "Negative prompt": negative}
    result.update(parse_params_line(last_line))
    return result


def parse_infotext(text: str, *, auto_backcompat: bool = True,
                   skip_keys: Iterable[str] = ()) -> dict[str, Any]:
    """A1111's ``parse_generation_parameters``: raw parse, defaults, legacy conversions."""
    result = parse_infotext_raw(text)
    for key, value in PARSE_DEFAULTS:
        result.setdefault(key, value)
    if "Hypernet" in result:
        strength = result.get("Hypernet strength", "1.0")
        result["Prompt"] += f"<hypernet:{result['Hypernet']}:{strength}>"
    restore_old_hires_params(result)
    for key, value in LATE_PARSE_DEFAULTS:
        result.setdefault(key, value)
    if result["FP8 weight"] != "Disable":
        result.setdefault("Cache FP16 weight for LoRA", False)
    if prompt_uses_emphasis(result["Prompt"]):
        result.setdefault("Emphasis", "Original")
    result.setdefault("Refiner switch by sampling steps", False)
    if auto_backcompat:
        apply_version_backcompat(result)
    for key in skip_keys:
        result.pop(key, None)
    return result


def prompt_uses_emphasis(prompt: str) -> bool:
    """Whether the prompt has an unescaped ``(`` or ``[`` (attention syntax)."""
    return re.search(r"(?<!\\)[(\[]", prompt) is not None


def old_hires_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """Pre-1.0 hires fix: the first pass had about 512x512 pixels, rounded up to 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


def restore_old_hires_params(result: dict[str, Any]) -> None:
    """Legacy ``First pass size``: the final size becomes the hires target size."""
    first_w, first_h = result.get("First pass size-1"), result.get("First pass size-2")
    if first_w is None or first_h is None:
        return
    width, height = int(result.get("Size-1", 512)), int(result.get("Size-2", 512))
    first_w, first_h = int(first_w), int(first_h)
    if first_w == 0 or first_h == 0:
        first_w, first_h = old_hires_first_pass_size(width, height)
    result["Size-1"], result["Size-2"] = first_w, first_h
    result["Hires resize-1"], result["Hires resize-2"] = width, height


def parse_version(text: str | None) -> Version | None:
    """A ``git describe`` version such as ``v1.10.1-96-g1937682a`` cut to ``v1.10.1-96``."""
    if not text:
        return None
    match = re.match(r"([^-]+-[^-]+)-.*", text)
    try:
        return Version(match.group(1) if match else text)
    except InvalidVersion:
        return None


def apply_version_backcompat(result: dict[str, Any]) -> None:
    """Keys that make old images reproduce with newer defaults (infotext_versions)."""
    version = parse_version(result.get("Version"))
    if version is None:
        return
    if version < VERSION_1_6_0 and "[" in result.get("Prompt", ""):
        result["Old prompt editing timelines"] = True
    if version < VERSION_1_6_0 and result.get("Sampler", "") in ("DDIM", "PLMS"):
        result["Pad conds v0"] = True
    if version < VERSION_TSNR:
        result["Downcast alphas_cumprod"] = True
    if version < VERSION_1_8_0 and result.get("Refiner"):
        result["Refiner switch by sampling steps"] = True
