"""SD upscale (img2img): enlarge with an upscaler, then re-diffuse it tile by tile.

As A1111's script (docs/a1111-semantics.md, "Built-in scripts"): the init image is enlarged by
`scale_factor` with the chosen upscaler (`int(side * scale) // 8 * 8`, see
`modules.upscaling.registry`; "None" leaves it as it is), cut into tiles of the job's width x height
overlapping by at least `overlap` pixels (`tiles.TileGrid`), every tile goes through img2img, and
the tiles are blended back. Tiles run `batch_size` at a time; batch `k` of repeat `n`
(`n_iter`) starts at seed `seed + n + k`, A1111's sequence. Each repeat gives one
picture, carrying the infotext of the first tile plus `SD upscale overlap` and
`SD upscale upscaler`. A mask in the request is not used.

`upscaler_index` takes A1111's index into the upscaler list (`/sdapi/v1/upscalers`
order) or an upscaler's name. Loaded upscaler models stay cached on the runtime
(`runtime.upscalers`), so the next job does not read the file again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.pipeline.img2img import flatten
from modules.scripts.args import ScriptArgsError, arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common
from modules.scripts.builtin.tiles import TileGrid
from modules.upscaling.registry import upscalers_of

TITLE = "SD upscale"


def upscaler_name(runtime, value: Any) -> str:
    """The upscaler an index or a name designates (error names the field)."""
    names = upscalers_of(runtime).names()
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(names):
            return names[value]
    elif isinstance(value, str):
        match = [name for name in names if name.lower() == value.lower()]
        if match:
            return match[0]
    raise ScriptArgsError(TITLE, "upscaler_index", f"{value!r} is not an upscaler index "
                                                   f"(0-{len(names) - 1}) or name ({names})")


def enlarge(runtime, image: Image.Image, scale: float, name: str, settings) -> Image.Image:
    if name == "None":
        return image
    return upscalers_of(runtime).upscale(image, scale, name, settings)


class SDUpscale(Script):
    @dataclass
    class Args:  # A1111's order (its first value is the info text, ignored)
        info: Any = arg(None, "Info (ignored)")
        overlap: int = arg(64, "Tile overlap", minimum=0, maximum=256, step=16)
        upscaler_index: Any = arg("None", "Upscaler")  # index or name
        scale_factor: float = arg(2.0, "Scale Factor", minimum=1.0, maximum=4.0, step=0.05)

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def check(self, runtime, params, args: "SDUpscale.Args") -> None:
        params = common.resolve_scale_by(params)
        upscaler_name(runtime, args.upscaler_index)
        if args.overlap >= min(params.width, params.height):
            raise ScriptArgsError(TITLE, "overlap", f"{args.overlap} must be smaller than the "
                                                    f"tile size {params.width}x{params.height}")

    def run(self, p: ScriptProcessing, args: "SDUpscale.Args"):
        params = common.fixed_seed_params(common.resolve_scale_by(p.params))
        settings = p.runtime.settings.for_request(params.override_settings)
        name = upscaler_name(p.runtime, args.upscaler_index)
        keys = {"SD upscale overlap": args.overlap, "SD upscale upscaler": name}
        init = flatten(params.init_images[0], settings.img2img_background_color)
        image = enlarge(p.runtime, init, args.scale_factor, name, settings)
        grid = TileGrid(image.width, image.height, params.width, params.height, args.overlap)
        tiles = grid.split(image)
        result = common.empty_result()
        for repeat in range(params.n_iter):
            done, first = yield from self.diffuse(p, params, tiles, params.seed + repeat)
            if first is None:
                break
            infotext = common.insert_infotext_params(first.infotexts[0], keys)
            picture = grid.merge(done)
            common.append(result, common.single_result(picture, first, infotext))
            saved = common.save_sample(p.runtime, params, picture, seed=params.seed + repeat,
                                       infotext=infotext)
            result.saved_paths += [saved] if saved else []
            if first.interrupted:
                break
        return result

    def diffuse(self, p: ScriptProcessing, params, tiles: list[Image.Image], seed: int):
        """Generator: every tile through img2img, `batch_size` at a time; returns
        (processed tiles, the first batch's result with the job's warnings)."""
        size = params.batch_size
        done, first = list(tiles), None
        for batch, start in enumerate(range(0, len(tiles), size)):
            chunk = tiles[start:start + size]
            job = dataclasses.replace(params, init_images=chunk, batch_size=len(chunk),
                                      n_iter=1, seed=seed + batch, resize_mode=0, mask=None,
                                      scale_by=None, do_not_save_samples=True,
                                      do_not_save_grid=True)
            part = yield from p.process(job)
            done[start:start + len(part.images)] = part.images
            if first is None:
                first = part
            else:
                first.warnings += [w for w in part.warnings if w not in first.warnings]
            if part.interrupted:
                first.interrupted = True
                break
        return done, first
