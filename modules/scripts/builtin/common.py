"""What the built-in scripts share: running cells, merging results, saving grids."""

from __future__ import annotations

import dataclasses
import random

from modules.imaging import save as image_io
from modules.infotext import quote
from modules.pipeline.output import (
    output_folder,
    save_grid,  # noqa: F401 (scripts call common.save_grid)
)
from modules.pipeline.params import GenerationResult


def fixed_seed_params(params):
    """A copy whose seed/subseed -1 are fixed once, so every cell shares them (A1111)."""
    changes = {}
    for name in ("seed", "subseed"):
        if getattr(params, name) == -1:
            changes[name] = random.randrange(4294967294)
    return dataclasses.replace(params, **changes) if changes else params


def empty_result() -> GenerationResult:
    return GenerationResult(images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                            negative_prompts=[])


def append(total: GenerationResult, part: GenerationResult, *, first_only: bool = False) -> None:
    """Add `part`'s images (or only its first) and everything that goes with them."""
    end = 1 if first_only else len(part.images)
    total.images += part.images[:end]
    total.infotexts += part.infotexts[:end]
    total.seeds += part.seeds[:end]
    total.subseeds += part.subseeds[:end]
    total.prompts += part.prompts[:end]
    total.negative_prompts += part.negative_prompts[:end]
    total.saved_paths += part.saved_paths
    total.warnings += [w for w in part.warnings if w not in total.warnings]
    total.interrupted = total.interrupted or part.interrupted
    for key, value in part.extra.items():
        total.extra.setdefault(key, value)


def add_infotext_params(infotext: str, extra: dict) -> str:
    """`infotext` with `Key: value` entries appended to its parameters line."""
    entries = ", ".join(f"{key}: {quote(value)}" for key, value in extra.items())
    return f"{infotext}, {entries}" if infotext else entries


def put_grid_first(result: GenerationResult, grid, infotext: str, *,
                   like: GenerationResult | None = None) -> None:
    """The grid as image 0 (the API then adds no grid of its own); its seed, prompt...
    are those of the first image of `like` (default: `result`)."""
    like = like or result
    result.images.insert(0, grid)
    result.infotexts.insert(0, infotext)
    for name in ("seeds", "subseeds", "prompts", "negative_prompts"):
        values = getattr(like, name)
        getattr(result, name).insert(0, values[0] if values else None)
    result.extra["grid_included"] = True


def insert_infotext_params(infotext: str, extra: dict) -> str:
    """`infotext` with `Key: value` entries added where A1111 puts a script's extra
    params: after the other parameters but before `Version` (and `User`)."""
    if not extra:
        return infotext
    head, newline, last = infotext.rpartition("\n")
    entries = ", ".join(f"{key}: {quote(value)}" for key, value in extra.items())
    cut = min((i for i in (last.rfind(", Version: "), last.rfind(", User: ")) if i >= 0),
              default=-1)
    if cut < 0:
        last = f"{last}, {entries}" if last else entries
    else:
        last = f"{last[:cut]}, {entries}{last[cut:]}"
    return f"{head}{newline}{last}"


def save_sample(runtime, params, image, *, seed: int | None, infotext: str,
                kind: str = "img2img") -> str | None:
    """Save a script's finished picture to the samples folder, as a normal image would
    be (when `samples_save` is on and the request saves images)."""
    settings = runtime.settings.for_request(params.override_settings)
    if not settings.samples_save or params.do_not_save_samples:
        return None
    directory = output_folder(runtime, settings, f"outdir_{kind}_samples")
    save = image_io.saver_of(runtime)
    path = save(image, directory, seed=seed, prompt=params.prompt, infotext=infotext,
                extension=settings.samples_format, pattern="[seed]",
                jpeg_quality=settings.jpeg_quality, write_metadata=settings.enable_pnginfo)
    return str(path)


def single_result(image, part: GenerationResult, infotext: str) -> GenerationResult:
    """A result holding one picture made from `part`'s jobs (its first seed/prompt)."""
    result = empty_result()
    result.images, result.infotexts = [image], [infotext]
    for name in ("seeds", "subseeds", "prompts", "negative_prompts"):
        values = getattr(part, name)
        getattr(result, name).append(values[0] if values else None)
    result.warnings = list(part.warnings)
    result.interrupted = part.interrupted
    result.extra = dict(part.extra)
    return result


def resolve_scale_by(params):
    """An img2img request with `scale_by` turned into width/height (img2img's rule:
    the first init image's size times the factor, rounded down to a multiple of 8), so
    scripts that change the init image or tile by the job's size see the real size."""
    if getattr(params, "scale_by", None) is None:
        return params
    first = params.init_images[0]
    return dataclasses.replace(
        params, scale_by=None, width=max(64, int(first.width * params.scale_by) // 8 * 8),
        height=max(64, int(first.height * params.scale_by) // 8 * 8))
