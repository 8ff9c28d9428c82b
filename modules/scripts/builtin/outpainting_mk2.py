"""Outpainting mk2 (img2img): grow the picture one side at a time over matched noise.

As A1111's script (docs/a1111-semantics.md, "Built-in scripts"), each chosen direction (left, right,
up, down, in that order) is one img2img pass: the picture is grown by `pixels` on that side, the
new area is filled with noise that follows the colours of the picture's border
(`matched_noise`), and a strip of the job's width (left/right) or height (up/down)
at the grown side, spanning the whole picture the other way, is inpainted with masked
content "original" and the mask blurred by `4 * mask_blur` across the seam. The mask
also covers `mask_blur` pixels of the old picture along the seam. The output is the
init image grown by exactly `pixels` on each chosen side.

A batch (`batch_size`) grows that many copies at once with consecutive seeds; each
`n_iter` repeats it with the seeds that follow. With two or more results a grid comes
first (`return_grid`). Every image carries the infotext of its first pass.

Where this differs from A1111, on purpose: each repeat of `n_iter` gets new seeds
(A1111 reuses the same seed); a side is padded to a multiple of 8 (not 64) while it
is processed, and the padding is cropped off; the mask is blurred only across the
current seam; `mask_blur` goes up to 16 since img2img's blur (four times it) stops
at 64; the noise is seeded by the image's seed, so results are reproducible.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from modules.imaging.grid import image_grid
from modules.pipeline.img2img import flatten
from modules.scripts.args import arg
from modules.scripts.base import Script, ScriptProcessing
from modules.scripts.builtin import common
from modules.scripts.builtin.matched_noise import matched_noise_fill
from modules.scripts.builtin.outpaint import DIRECTIONS, Margins, ceil8, parse_directions

TITLE = "Outpainting mk2"


@dataclass
class SidePass:
    """The geometry of growing one side: canvas, known box, strip and final crop."""

    canvas: tuple[int, int]
    known: tuple[int, int, int, int]
    keep: tuple[int, int, int, int]  # the mask's black box (known, minus the seam band)
    strip: tuple[int, int, int, int]
    output: tuple[int, int, int, int]
    pad_other: tuple[int, int]  # edge pixels added right / below to reach a multiple of 8


def side_pass(size: tuple[int, int], direction: str, pixels: int, blur: int,
              job_size: tuple[int, int]) -> SidePass:
    width, height = size
    horizontal = direction in ("left", "right")
    along = width if horizontal else height
    grow = ceil8(along + pixels) - along  # the new pixels plus rounding, on the outer side
    pad_other = (0, ceil8(height) - height) if horizontal else (ceil8(width) - width, 0)
    margins = Margins.of((direction,), grow)
    padded = (width + pad_other[0], height + pad_other[1])
    canvas = margins.grown(*padded)
    known = (margins.left, margins.up, margins.left + padded[0], margins.up + padded[1])
    keep = margins.kept_box(*padded, inset=blur)
    extra = grow - pixels
    output = (margins.left and extra, margins.up and extra,
              margins.left + width + (pixels if margins.right else 0),
              margins.up + height + (pixels if margins.down else 0))
    strip_w = min(job_size[0], canvas[0]) if horizontal else canvas[0]
    strip_h = canvas[1] if horizontal else min(job_size[1], canvas[1])
    x0 = canvas[0] - strip_w if direction == "right" else 0
    y0 = canvas[1] - strip_h if direction == "down" else 0
    return SidePass(canvas=canvas, known=known, keep=keep,
                    strip=(x0, y0, x0 + strip_w, y0 + strip_h), output=output,
                    pad_other=pad_other)


def noisy_canvas(picture: Image.Image, geometry: SidePass, *, falloff: float,
                 color_variation: float, seed: int) -> Image.Image:
    """The picture on the grown canvas, the new area filled with matched noise."""
    array = np.asarray(picture.convert("RGB"), dtype=np.float64) / 255.0
    array = np.pad(array, [(0, geometry.pad_other[1]), (0, geometry.pad_other[0]), (0, 0)],
                   mode="edge")
    canvas = np.zeros((geometry.canvas[1], geometry.canvas[0], 3))
    x1, y1, x2, y2 = geometry.known
    canvas[y1:y2, x1:x2] = array
    filled = matched_noise_fill(canvas, geometry.known, falloff=falloff,
                                color_variation=color_variation,
                                rng=np.random.default_rng(seed % 2**32))
    return Image.fromarray(np.rint(filled * 255).astype(np.uint8), mode="RGB")


class OutpaintingMk2(Script):
    @dataclass
    class Args:  # A1111's order (its first value is the info text, ignored)
        info: Any = arg(None, "Info (ignored)")
        pixels: int = arg(128, "Pixels to expand", minimum=8, maximum=256, step=8)
        mask_blur: int = arg(8, "Mask blur", minimum=0, maximum=16)
        direction: list = arg(list(DIRECTIONS), "Outpainting direction")
        noise_q: float = arg(1.0, "Fall-off exponent (lower=higher detail)", minimum=0.0,
                             maximum=4.0, step=0.01)
        color_variation: float = arg(0.05, "Color variation", minimum=0.0, maximum=1.0,
                                     step=0.01)

    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def check(self, runtime, params, args: "OutpaintingMk2.Args") -> None:
        parse_directions(TITLE, args.direction)

    def run(self, p: ScriptProcessing, args: "OutpaintingMk2.Args"):
        params = common.fixed_seed_params(common.resolve_scale_by(p.params))
        settings = p.runtime.settings.for_request(params.override_settings)
        init = flatten(params.init_images[0], settings.img2img_background_color)
        result = common.empty_result()
        for batch in range(params.n_iter):
            seed = params.seed + batch * params.batch_size
            pictures, first = yield from self.grow(p, params, args, init, seed)
            if first is None:
                break
            first.images = pictures[:len(first.infotexts)]
            common.append(result, first)
            if result.interrupted:
                break
        for image, seed, infotext in zip(result.images, result.seeds, result.infotexts):
            saved = common.save_sample(p.runtime, params, image, seed=seed, infotext=infotext)
            result.saved_paths += [saved] if saved else []
        if len(result.images) >= 2:
            grid = image_grid(result.images)
            common.save_grid(p.runtime, params, grid, result.infotexts[0], kind="img2img")
            if settings.return_grid:
                common.put_grid_first(result, grid, result.infotexts[0])
        return result

    def grow(self, p: ScriptProcessing, params, args: "OutpaintingMk2.Args",
             init: Image.Image, seed: int):
        """Generator: one batch grown in every direction; returns (pictures, first pass)."""
        pictures = [init] * params.batch_size
        first = None
        for number, direction in enumerate(parse_directions(TITLE, args.direction)):
            pictures, part = yield from self.grow_side(p, params, args, pictures, direction,
                                                       seed, number)
            first = first or part
            if part.interrupted:
                first.interrupted = True
                break
        return pictures, first

    def grow_side(self, p: ScriptProcessing, params, args: "OutpaintingMk2.Args",
                  pictures: list[Image.Image], direction: str, seed: int, number: int):
        """Generator: one img2img pass growing every picture of the batch on one side."""
        geometry = side_pass(pictures[0].size, direction, args.pixels, args.mask_blur,
                             (params.width, params.height))
        canvases = [noisy_canvas(picture, geometry, falloff=args.noise_q,
                                 color_variation=args.color_variation,
                                 seed=(seed + slot) * 4 + number)
                    for slot, picture in enumerate(pictures)]
        mask = Image.new("L", geometry.canvas, 255)
        mask.paste(0, geometry.keep)
        horizontal = direction in ("left", "right")
        x0, y0, x1, y1 = geometry.strip
        job = dataclasses.replace(
            params, init_images=[canvas.crop(geometry.strip) for canvas in canvases],
            mask=mask.crop(geometry.strip), width=x1 - x0, height=y1 - y0, seed=seed,
            mask_blur_x=4 * args.mask_blur if horizontal else 0,
            mask_blur_y=0 if horizontal else 4 * args.mask_blur,
            inpainting_fill=1, inpaint_full_res=False, inpainting_mask_invert=0,
            resize_mode=0, scale_by=None, n_iter=1, do_not_save_samples=True,
            do_not_save_grid=True)
        part = yield from p.process(job)
        grown = []
        for slot, canvas in enumerate(canvases):
            if slot < len(part.images):
                canvas.paste(part.images[slot], (x0, y0))
            grown.append(canvas.crop(geometry.output))
        return grown, part
