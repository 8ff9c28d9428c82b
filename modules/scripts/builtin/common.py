"""What the built-in scripts share: running cells, merging results, saving grids."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random

from modules import images as image_io
from modules.infotext import quote
from modules.params import GenerationResult


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


def save_grid(runtime, params, grid, infotext: str, *, kind: str) -> str | None:
    """Save to the grids folder when `grid_save` is on and the request saves images."""
    settings = runtime.settings.current.with_overrides(params.override_settings)
    if not settings.grid_save or params.do_not_save_grid:
        return None
    root = runtime.paths.output_dir(getattr(settings, f"outdir_{kind}_grids"))
    directory = root / dt.date.today().strftime("%Y-%m-%d") if settings.save_to_dirs else root
    path = image_io.save_image(grid, directory, seed=None, prompt=params.prompt,
                               infotext=infotext, extension=settings.samples_format,
                               pattern="grid", write_metadata=settings.enable_pnginfo)
    return str(path)
