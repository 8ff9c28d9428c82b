"""img2img over a folder of images, and the sketch tabs' input compositing.

`img2img_batch` is A1111's img2img "Batch" tab (docs/a1111-semantics.md, "img2img batch"): every
image of `input_dir` (sorted by name) goes through `img2img` with the same settings; a mask of
the same file stem in `mask_dir` makes it an inpainting job; with `png_info_props`
the chosen parameters are read from the infotext of the image (or of the same-named
file in `png_info_dir`): "Prompt" and "Negative prompt" are appended to the given
prompts, "Seed", "CFG scale", "Sampler", "Steps" replace them. Results are written to
`output_dir` as `<stem>.png` (`<stem>-<n>.png` for several) with their infotext.

Sketch: the Sketch tab sends the picture with the user's strokes composited on top
(`composite_sketch`); Inpaint sketch also repaints where the strokes are
(`sketch_mask`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from modules.imaging.save import png_metadata, read_infotext
from modules.infotext import parse_infotext
from modules.pipeline.img2img import img2img
from modules.pipeline.params import Img2ImgParams

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
PNG_INFO_PROPS = ("Prompt", "Negative prompt", "Seed", "CFG scale", "Sampler", "Steps")


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _same_stem(folder: Path | None, stem: str) -> Path | None:
    if folder is None:
        return None
    return next((p for p in list_images(folder) if p.stem == stem), None)


def params_from_png_info(params: Img2ImgParams, infotext: str | None,
                         props: tuple[str, ...]) -> Img2ImgParams:
    """`params` with the chosen infotext parameters applied (see the module docstring)."""
    if not infotext:
        return params
    parsed, changes = parse_infotext(infotext), {}
    if "Prompt" in props and parsed.get("Prompt"):
        changes["prompt"] = " ".join(t for t in (params.prompt, parsed["Prompt"]) if t)
    if "Negative prompt" in props and parsed.get("Negative prompt"):
        changes["negative_prompt"] = " ".join(
            t for t in (params.negative_prompt, parsed["Negative prompt"]) if t)
    for key, name, kind in (("Seed", "seed", int), ("CFG scale", "cfg_scale", float),
                            ("Sampler", "sampler_name", str), ("Steps", "steps", int)):
        if key in props and key in parsed:
            changes[name] = kind(parsed[key])
    return replace(params, **changes)


def img2img_batch(runtime, params: Img2ImgParams, *, input_dir: Path, output_dir: Path,
                  mask_dir: Path | None = None, png_info_props: tuple[str, ...] = (),
                  png_info_dir: Path | None = None):
    """Run img2img on every image of `input_dir`; yields Progress, returns the results."""
    results = []
    output_dir.mkdir(parents=True, exist_ok=True)
    for path in list_images(Path(input_dir)):
        image = Image.open(path)
        image.load()
        mask_path = _same_stem(mask_dir, path.stem)
        info_source = _same_stem(png_info_dir, path.stem) or path
        job = replace(params, init_images=[image], do_not_save_samples=True,
                      mask=Image.open(mask_path) if mask_path else params.mask)
        if png_info_props:
            job = params_from_png_info(job, read_infotext(Image.open(info_source)),
                                       png_info_props)
        result = yield from img2img(runtime, job)
        for n, (out, text) in enumerate(zip(result.images, result.infotexts)):
            name = path.stem if len(result.images) == 1 else f"{path.stem}-{n}"
            out.save(output_dir / f"{name}.png", format="PNG", pnginfo=png_metadata(out, text))
        results.append(result)
        if result.interrupted:
            break
    return results


def composite_sketch(image: Image.Image, strokes: Image.Image) -> Image.Image:
    """The picture with an RGBA stroke layer composited on top, as RGB."""
    base = image.convert("RGBA")
    layer = strokes.convert("RGBA").resize(base.size)
    return Image.alpha_composite(base, layer).convert("RGB")


def sketch_mask(image: Image.Image, sketched: Image.Image) -> Image.Image:
    """White where the sketched picture differs from the original (Inpaint sketch)."""
    a = np.asarray(image.convert("RGB"), dtype=np.int16)
    b = np.asarray(sketched.convert("RGB").resize(image.size), dtype=np.int16)
    changed = np.abs(a - b).max(axis=-1) > 0
    return Image.fromarray((changed * 255).astype(np.uint8), mode="L")
