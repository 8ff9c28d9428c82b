"""Poor man's outpainting (img2img): grow the canvas and inpaint the new border, tile by tile.

As A1111's script (docs/a1111-semantics.md, "Built-in scripts"): the init image is pasted on a
canvas grown by `pixels` on each chosen side; the mask is white over the new area and over a band of
`2 * mask_blur` pixels of the original along the grown sides, and img2img blurs it
by `2 * mask_blur`. The canvas is cut into tiles of the job's width x height that
overlap by `pixels`; every tile that touches the new area is inpainted (masked
content as chosen, "Whole picture", seeds `seed, seed + 1, ...` tile by tile),
tiles wholly inside the original are kept, and the tiles are blended back
(`tiles.TileGrid`). The result is one picture with the first tile's infotext.

Where this differs from A1111, on purpose:
- the canvas grows by exactly `pixels` per side (A1111 rounds it up to a multiple of
  64 and shares the extra between the sides): tiles are always the job's size, so the
  canvas needs no rounding;
- one mask serves both the picture and the latent blend (A1111 also builds a less
  blurred "latent mask");
- `mask_blur` goes up to 32, since img2img's blur (twice it) stops at 64.
The overlay of the original keeps every pixel outside the blurred mask unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from PIL import Image

from modules.pipeline.img2img import flatten
from modules.pipeline.params import MASKED_CONTENT
from modules.scripts.args import ScriptArgsError, arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common
from modules.scripts.builtin.outpaint import DIRECTIONS, Margins, choice_index, parse_directions
from modules.scripts.builtin.tiles import TileGrid

TITLE = "Poor man's outpainting"


def outpaint_canvas(init: Image.Image, margins: Margins, blur: int
                    ) -> tuple[Image.Image, Image.Image]:
    """(grown picture with black new area, mask: white = repaint)."""
    width, height = margins.grown(init.width, init.height)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(init, (margins.left, margins.up))
    mask = Image.new("L", (width, height), 255)
    x0, y0, x1, y1 = margins.kept_box(init.width, init.height, inset=2 * blur)
    if x1 > x0 and y1 > y0:
        mask.paste(0, (x0, y0, x1, y1))
    return canvas, mask


def inside(box: tuple[int, int, int, int], outer: tuple[int, int, int, int]) -> bool:
    return (box[0] >= outer[0] and box[1] >= outer[1] and box[2] <= outer[2]
            and box[3] <= outer[3])


class PoorMansOutpainting(Script):
    @dataclass
    class Args:  # A1111's order: pixels, mask_blur, inpainting_fill, direction
        pixels: int = arg(128, "Pixels to expand", minimum=8, maximum=256, step=8)
        mask_blur: int = arg(4, "Mask blur", minimum=0, maximum=32)
        inpainting_fill: Any = arg("fill", "Masked content")  # label or index
        direction: list = arg(list(DIRECTIONS), "Outpainting direction")

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def check(self, runtime, params, args: "PoorMansOutpainting.Args") -> None:
        params = common.resolve_scale_by(params)
        parse_directions(TITLE, args.direction)
        choice_index(TITLE, "inpainting_fill", args.inpainting_fill, MASKED_CONTENT)
        if args.pixels >= min(params.width, params.height):
            raise ScriptArgsError(TITLE, "pixels", f"{args.pixels} must be smaller than the "
                                                   f"tile size {params.width}x{params.height} "
                                                   "(tiles overlap by the expanded pixels)")

    def run(self, p: ScriptProcessing, args: "PoorMansOutpainting.Args"):
        params = common.fixed_seed_params(common.resolve_scale_by(p.params))
        settings = p.runtime.settings.for_request(params.override_settings)
        init = flatten(params.init_images[0], settings.img2img_background_color)
        margins = Margins.of(parse_directions(TITLE, args.direction), args.pixels)
        canvas, mask = outpaint_canvas(init, margins, args.mask_blur)
        grid = TileGrid(canvas.width, canvas.height, params.width, params.height, args.pixels)
        pictures, masks = grid.split(canvas), grid.split(mask)
        kept = margins.kept_box(init.width, init.height)
        work = [i for i, tile in enumerate(grid.tiles()) if not inside(grid.box(tile), kept)]
        template = dataclasses.replace(
            params, mask_blur_x=2 * args.mask_blur, mask_blur_y=2 * args.mask_blur,
            inpainting_fill=choice_index(TITLE, "inpainting_fill", args.inpainting_fill,
                                         MASKED_CONTENT),
            inpaint_full_res=False, inpainting_mask_invert=0, resize_mode=0, scale_by=None,
            batch_size=1, n_iter=1, do_not_save_samples=True, do_not_save_grid=True)
        first = None
        for n, index in enumerate(work):
            job = dataclasses.replace(template, init_images=[pictures[index]],
                                      mask=masks[index], seed=params.seed + n)
            part = yield from p.process(job)
            first = first or part
            if part.images:
                pictures[index] = part.images[0]
            if part.interrupted:
                first.interrupted = True
                break
        combined = grid.merge(pictures)
        if first is None:
            return common.single_result(combined, common.empty_result(), "")
        infotext = first.infotexts[0]
        result = common.single_result(combined, first, infotext)
        saved = common.save_sample(p.runtime, params, combined, seed=params.seed,
                                   infotext=infotext)
        result.saved_paths = [saved] if saved else []
        return result
