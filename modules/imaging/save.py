"""Save generated images the way A1111 does: numbered names, patterns, embedded infotext.

Users keep years of A1111 output folders and tools that read them, so we keep the
layout (``outputs/txt2img-images/YYYY-MM-DD/00042-1234.png``), the ``[tag]`` filename
patterns, and where the infotext lives inside the file:

* PNG: a ``parameters`` text chunk (tEXt, or iTXt when the text is not Latin-1), with
  the image's other string ``info`` entries kept;
* JPEG / WebP: the EXIF ``UserComment`` in piexif's "UNICODE" encoding.

The number in front is one more than the highest number already in the folder. Each
file is created with ``O_EXCL`` and the next number is tried if the name is taken, so
two workers saving at once never overwrite each other. Every name is sanitised to a
single path component: patterns and prompts cannot climb out of the folder, and valid on
Windows as on Linux and macOS (`modules/imaging/filenames.py`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import piexif
import piexif.helper
from PIL import Image, PngImagePlugin

from modules.imaging import filenames

OUTPUT_KINDS: tuple[str, ...] = (
    "txt2img-images", "txt2img-grids", "img2img-images", "img2img-grids",
    "extras-images", "init-images",
)
FORMATS: Mapping[str, str] = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}

# Windows' reserved characters (filenames.py) and '#', which A1111 also replaces.
INVALID_FILENAME_CHARS = '#' + filenames.WINDOWS_INVALID_CHARS
MAX_FILENAME_PART_LENGTH = 128
MAX_FILENAME_BYTES = 255  # the usual NAME_MAX of Linux/macOS file systems
MAX_NUMBER_ATTEMPTS = 1000
DEFAULT_MAX_PROMPT_WORDS = 8

TAG_PATTERN = re.compile(r"\[([^\[\]]+)\]")
TAG_ARGUMENT = re.compile(r"^(.*)<([^>]*)>$")
NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")
# Format bookkeeping that Pillow puts in ``info``; not worth showing in PNG Info.
IGNORED_INFO_KEYS: frozenset[str] = frozenset({
    "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop", "background",
    "timestamp", "duration", "progressive", "progression", "icc_profile", "chromaticity",
    "photoshop",
})
SKIP_PREVIOUS_TEXT = object()  # a tag with no value also drops the literal text before it

# NovelAI's sampler identifiers -> A1111 sampler names (for NovelAI PNG conversion).
NOVELAI_SAMPLERS: Mapping[str, str] = {
    "k_euler_ancestral": "Euler a", "k_euler": "Euler", "k_lms": "LMS", "k_heun": "Heun",
    "k_dpm_2": "DPM2", "k_dpm_2_ancestral": "DPM2 a", "k_dpmpp_2s_ancestral": "DPM++ 2S a",
    "k_dpmpp_2m": "DPM++ 2M", "k_dpmpp_sde": "DPM++ SDE", "ddim": "DDIM", "plms": "PLMS",
}


def _replace_invalid_chars(text: str) -> str:
    """Reserved characters (separators included) become '_'; control characters go."""
    return filenames.replace_invalid_chars(text, extra="#")


def sanitize_filename_part(text: str, *, replace_spaces: bool = True) -> str:
    """One file-name-safe piece: no separators or reserved characters, at most 128 chars."""
    if replace_spaces:
        text = text.replace(" ", "_")
    return _replace_invalid_chars(text).lstrip(" ")[:MAX_FILENAME_PART_LENGTH].rstrip(" .")


def dated_output_dir(root: str | os.PathLike[str], kind: str, date: dt.date) -> Path:
    """``<root>/<kind>/YYYY-MM-DD``, e.g. ``outputs/txt2img-images/2024-05-01``."""
    if not kind or Path(kind).name != kind or kind in (".", ".."):
        raise ValueError(f"output kind must be a plain folder name, got {kind!r}")
    return Path(root) / kind / date.strftime("%Y-%m-%d")


@dataclass(frozen=True, kw_only=True)
class FilenameFields:
    """The values filename ``[tags]`` expand to. None means "not known": the tag stays."""

    seed: int | None = None
    prompt: str | None = None
    width: int | None = None
    height: int | None = None
    sampler: str | None = None
    steps: int | None = None
    cfg_scale: float | None = None
    model_name: str | None = None
    model_hash: str | None = None
    batch_number: int | None = None  # None: single image, tag and text before it vanish
    generation_number: int | None = None
    now: dt.datetime | None = None
    max_prompt_words: int = DEFAULT_MAX_PROMPT_WORDS

    def prompt_words(self) -> str:
        words = [word for word in NON_LETTERS.split(self.prompt or "") if word]
        return " ".join(words[: self.max_prompt_words] or ["empty"])

    def tag_value(self, tag: str, argument: str | None) -> Any:
        """The text for ``tag`` (already sanitised), None if unknown, or SKIP_PREVIOUS_TEXT."""
        now = self.now or dt.datetime.now()
        text_tags = {"prompt": (self.prompt, True), "prompt_spaces": (self.prompt, False),
                     "sampler": (self.sampler, True), "model_name": (self.model_name, True)}
        if tag in text_tags:
            value, replace_spaces = text_tags[tag]
            return None if value is None else sanitize_filename_part(
                value, replace_spaces=replace_spaces)
        if tag == "prompt_words":
            return sanitize_filename_part(self.prompt_words(), replace_spaces=False)
        if tag in ("batch_number", "generation_number"):
            number = getattr(self, tag)
            return SKIP_PREVIOUS_TEXT if number is None else number
        simple = {"seed": self.seed, "width": self.width, "height": self.height,
                  "steps": self.steps, "cfg": self.cfg_scale, "model_hash": self.model_hash,
                  "date": now.strftime("%Y-%m-%d"), "none": ""}
        if tag == "datetime":
            return sanitize_filename_part(now.strftime(argument or "%Y%m%d%H%M%S"))
        return simple.get(tag)


def apply_pattern(pattern: str, fields: FilenameFields) -> str:
    """Expand ``[tags]`` in ``pattern``; unknown tags are kept as written (A1111 does too)."""
    pieces: list[str] = []
    position = 0
    for match in TAG_PATTERN.finditer(pattern):
        literal = pattern[position:match.start()]
        position = match.end()
        tag, argument = match.group(1), None
        with_argument = TAG_ARGUMENT.match(tag)
        if with_argument:
            tag, argument = with_argument.groups()
        value = fields.tag_value(tag.lower(), argument)
        if value is SKIP_PREVIOUS_TEXT:
            continue
        pieces.append(literal + (match.group(0) if value is None else str(value)))
    pieces.append(pattern[position:])
    return "".join(pieces)


def next_sequence_number(directory: Path) -> int:
    """1 + the highest leading number of a file name in ``directory`` (0 if none)."""
    highest = -1
    if directory.is_dir():
        for entry in os.listdir(directory):
            leading = os.path.splitext(entry)[0].split("-")[0]
            if leading.isdigit():
                highest = max(highest, int(leading))
    return highest + 1


def numbered_filename(number: int, decoration: str, extension: str) -> str:
    """``NNNNN-<decoration>.<ext>``, sanitised to one component and at most 255 bytes."""
    # Literal pattern text is not sanitised tag by tag, so the whole is cleaned here.
    decoration = _replace_invalid_chars(decoration).lstrip(" ")
    stem = f"{number:05}"
    budget = MAX_FILENAME_BYTES - len(stem) - len(extension) - 2  # '-' and '.'
    decoration = filenames.truncate_utf8(decoration, budget).rstrip(" .")
    # Starting with digits, the name is never a Windows device name (CON, NUL, COM1...).
    return f"{stem}-{decoration}.{extension}" if decoration else f"{stem}.{extension}"


def _reserve_file(directory: Path, decoration: str, extension: str) -> tuple[Path, int]:
    """Create the next free numbered file exclusively; returns its path and open fd."""
    number = next_sequence_number(directory)
    for _ in range(MAX_NUMBER_ATTEMPTS):
        path = directory / numbered_filename(number, decoration, extension)
        if path.parent != directory:
            raise ValueError(f"file name {path.name!r} would leave {directory}")
        try:
            return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            number += 1
    raise FileExistsError(f"no free file number in {directory} after {MAX_NUMBER_ATTEMPTS} tries")


def png_metadata(image: Image.Image, infotext: str | None) -> PngImagePlugin.PngInfo:
    """The image's string info entries plus ``parameters`` (Pillow picks tEXt or iTXt)."""
    info = PngImagePlugin.PngInfo()
    for key, value in (image.info or {}).items():
        if isinstance(key, str) and isinstance(value, str) and key != "parameters":
            info.add_text(key, value)
    if infotext is not None:
        info.add_text("parameters", infotext)
    return info


def exif_with_comment(infotext: str) -> bytes:
    """EXIF bytes whose UserComment holds ``infotext`` in the UNICODE encoding."""
    comment = piexif.helper.UserComment.dump(infotext, encoding="unicode")
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})


def _save_options(image: Image.Image, image_format: str, infotext: str | None, *,
                  quality: int, lossless: bool) -> tuple[Image.Image, dict[str, Any]]:
    if image_format == "PNG":
        return image, {"pnginfo": png_metadata(image, infotext)}
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")  # JPEG has no alpha; keep WebP output like A1111's
    options: dict[str, Any] = {"quality": quality}
    if image_format == "WEBP":
        options["lossless"] = lossless
    if infotext is not None:
        options["exif"] = exif_with_comment(infotext)
    return image, options


def saver_of(runtime) -> Callable[..., Path]:
    """How a job saves a picture: `save_image`, unless the runtime routes saving elsewhere
    (a cluster replica records what to save; its ingress writes it, `modules.cluster`)."""
    return getattr(runtime, "saver", None) or save_image


def save_image(image: Image.Image, directory: str | os.PathLike[str], *, seed: int | None,
               prompt: str, infotext: str | None, extension: str = "png",
               pattern: str = "[seed]", fields: FilenameFields | None = None,
               jpeg_quality: int = 80, webp_lossless: bool = False,
               write_metadata: bool = True, save_txt: bool = False) -> Path:
    """Save ``image`` as ``<directory>/NNNNN-<pattern>.<ext>`` with its infotext; return the path.

    ``fields`` supplies the other tag values (sampler, steps, ...); ``seed``, ``prompt``
    and the image size always come from the arguments and the image. ``write_metadata``
    is A1111's ``enable_pnginfo``; ``save_txt`` also writes the infotext beside the image.
    """
    extension = extension.lower().lstrip(".")
    if extension not in FORMATS:
        raise ValueError(f"extension must be one of {sorted(FORMATS)}, got {extension!r}")
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    fields = replace(fields or FilenameFields(), seed=seed, prompt=prompt,
                     width=image.width, height=image.height)
    decoration = apply_pattern(pattern, fields) if seed is not None else ""
    embedded = infotext if write_metadata else None
    to_save, options = _save_options(image, FORMATS[extension], embedded,
                                     quality=jpeg_quality, lossless=webp_lossless)
    path, fd = _reserve_file(directory, decoration, extension)
    try:
        with os.fdopen(fd, "wb") as handle:
            to_save.save(handle, format=FORMATS[extension], **options)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    if save_txt and infotext is not None:
        path.with_suffix(".txt").write_text(infotext, encoding="utf-8")
    return path


def _exif_comment(exif_data: bytes) -> str | None:
    try:
        exif = piexif.load(exif_data)
    except Exception:  # piexif raises several types on foreign/garbled EXIF
        return None
    comment = exif.get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    try:
        return piexif.helper.UserComment.load(comment)
    except ValueError:
        return comment.decode("utf-8", errors="ignore")


def _novelai_infotext(image: Image.Image, items: Mapping[str, Any]) -> str | None:
    """NovelAI stores prompt and settings separately; rebuild an A1111 infotext."""
    try:
        settings = json.loads(items["Comment"])
        sampler = NOVELAI_SAMPLERS.get(str(settings["sampler"]).lower(), "Euler a")
        return (f"{items['Description']}\nNegative prompt: {settings['uc']}\n"
                f"Steps: {settings['steps']}, Sampler: {sampler}, CFG scale: {settings['scale']}, "
                f"Seed: {settings['seed']}, Size: {image.width}x{image.height}, "
                "Clip skip: 2, ENSD: 31337")
    except (KeyError, TypeError, ValueError):
        return None


def read_image_info(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """(infotext or None, the other info items), in A1111's order of precedence."""
    items = dict(image.info or {})
    infotext = items.pop("parameters", None)
    if "exif" in items:
        comment = _exif_comment(items.pop("exif"))
        if comment:
            infotext = comment
    elif "comment" in items:  # GIF
        comment = items["comment"]
        if isinstance(comment, bytes):
            comment = comment.decode("utf-8", errors="ignore")
        infotext = comment
    for key in IGNORED_INFO_KEYS:
        items.pop(key, None)
    if items.get("Software") == "NovelAI":
        infotext = _novelai_infotext(image, items) or infotext
    return infotext, items


def read_infotext(image: Image.Image) -> str | None:
    """The generation parameters stored in ``image``, if any."""
    return read_image_info(image)[0]
