"""The Extras tab's three ways in: a single image, uploaded files, or a folder.

The upscale itself is `modules.upscaling.extras.run_extras`; this module picks the images, checks
the sizes they would grow to, and saves the results as A1111's Extras tab does: into
the "Extras output folder" setting (`outputs/extras-images/NNNNN.png`, no date
folder), or for "Batch from directory" into the chosen output folder under the
source's own name (numbered instead when that name is taken: nothing is overwritten).
A saved result keeps the source's `parameters` infotext and gains an `extras` text
chunk with what was done (A1111's "extras" PNG info section).

Files that cannot be read in a batch are skipped and named in the warnings, so one bad
file never stops the rest; a bad single image, folder or size is a `ParamsError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from modules.errors import ParamsError
from modules.imaging.decode import DEFAULT_MAX_INPUT_PIXELS, check_size
from modules.imaging.save import read_infotext, save_image
from modules.upscaling.extras import ExtrasParams, run_extras
from modules.upscaling.face_registry import face_restorers_of
from modules.upscaling.registry import upscalers_of

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MAX_SIDE = 16384  # the largest result side; beyond it one image needs gigabytes

Mode = Literal["single", "batch", "directory"]


@dataclass(kw_only=True)
class ExtrasJob:
    """What the Extras tab asks for: the images (by mode), the upscale, where to save."""

    mode: Mode = "single"
    image: Image.Image | None = None
    files: list[str] = field(default_factory=list)
    input_dir: str = ""
    output_dir: str = ""
    show_results: bool = True
    params: ExtrasParams = field(default_factory=ExtrasParams)


@dataclass
class ExtrasOutcome:
    images: list[Image.Image]
    info: dict
    saved_paths: list[str]
    warnings: list[str]


def run_extras_job(runtime, job: ExtrasJob) -> ExtrasOutcome:
    """Upscale every image of `job`, save each result, return what to show."""
    registry = upscalers_of(runtime)
    job.params.validate(registry.names())
    settings = runtime.settings.current
    sources, warnings = _sources(runtime, job)
    folder = _output_folder(runtime, job, settings)
    outcome = ExtrasOutcome(images=[], info={}, saved_paths=[], warnings=warnings)
    for name, image in sources:
        _check_size(image, job.params)
        result, outcome.info = run_extras(registry, image, job.params, settings,
                                          faces=face_restorers_of(runtime))
        outcome.saved_paths.append(str(_save(result, image, name, folder, job, settings,
                                             outcome.info)))
        if job.show_results:
            outcome.images.append(result)
    return outcome


def _sources(runtime, job: ExtrasJob) -> tuple[list[tuple[str | None, Image.Image]], list[str]]:
    if job.mode == "single":
        if job.image is None:
            raise ParamsError("image", "upload an image to process")
        return [(None, job.image)], []
    if job.mode == "batch":
        if not job.files:
            raise ParamsError("image_folder", "upload one or more images to process")
        return _open_all([Path(f) for f in job.files])
    if job.mode == "directory":
        if getattr(runtime.args, "hide_ui_dir_config", False):
            raise ParamsError("input_dir", "batch from directory is disabled "
                                           "(--hide-ui-dir-config)")
        folder = Path(job.input_dir.strip()).expanduser()
        if not job.input_dir.strip() or not folder.is_dir():
            raise ParamsError("input_dir", f"{job.input_dir!r} is not a folder")
        files = sorted(p for p in folder.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ParamsError("input_dir", f"no images in {folder}")
        return _open_all(files)
    raise ParamsError("mode", f"{job.mode!r} is not one of: single, batch, directory")


def _open_all(paths: list[Path]) -> tuple[list[tuple[str, Image.Image]], list[str]]:
    opened, warnings = [], []
    for path in paths:
        try:
            with Image.open(path) as image:  # the header only: refuse a bomb unread
                check_size(image.size, field="image_folder", max_pixels=DEFAULT_MAX_INPUT_PIXELS)
                image.load()
                opened.append((path.stem, image.copy()))
        except Exception as error:  # any unreadable file: skip it and say which
            warnings.append(f"skipped {path.name}: {error}")
    if not opened:
        raise ParamsError("image_folder", "none of the files is a readable image: "
                                          + "; ".join(warnings))
    return opened, warnings


def _output_folder(runtime, job: ExtrasJob, settings) -> Path:
    if job.mode == "directory" and job.output_dir.strip():
        folder = Path(job.output_dir.strip()).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ParamsError("output_dir", f"{folder} is a file, not a folder")
        return folder
    return runtime.paths.output_dir(settings.outdir_extras_samples)


def _check_size(image: Image.Image, p: ExtrasParams) -> None:
    scale = p.upscaling_resize if p.resize_mode == 0 else max(
        p.upscaling_resize_w / image.width, p.upscaling_resize_h / image.height)
    width, height = int(image.width * scale), int(image.height * scale)
    if p.upscaler_1 != "None" and max(width, height) > MAX_SIDE:
        field_name = "upscaling_resize" if p.resize_mode == 0 else "upscaling_resize_w"
        raise ParamsError(field_name, f"a {image.width}x{image.height} image would become "
                                      f"{width}x{height}; the largest side allowed is {MAX_SIDE}")


def _save(result: Image.Image, source: Image.Image, name: str | None, folder: Path,
          job: ExtrasJob, settings, info: dict) -> Path:
    result.info["extras"] = ", ".join(f"{k}: {v}" for k, v in info.items())
    extension = settings.samples_format
    infotext = read_infotext(source)
    if job.mode == "directory" and name:
        target = folder / f"{name}.{extension}"
        if not target.exists():
            return _save_named(result, target, infotext, settings)
    return save_image(result, folder, seed=None, prompt="", infotext=infotext,
                      extension=extension, jpeg_quality=settings.jpeg_quality,
                      write_metadata=settings.enable_pnginfo)


def _save_named(result: Image.Image, target: Path, infotext: str | None, settings) -> Path:
    """Save under the source's name (batch from directory): written as a numbered file
    first, then hard-linked to the name, which fails rather than overwrite a file that
    appeared meanwhile (the numbered copy is then kept)."""
    saved = save_image(result, target.parent, seed=None, prompt="", infotext=infotext,
                       extension=target.suffix.lstrip("."), jpeg_quality=settings.jpeg_quality,
                       write_metadata=settings.enable_pnginfo)
    try:
        os.link(saved, target)
    except OSError:
        return saved
    saved.unlink()
    return target
