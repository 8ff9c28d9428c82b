"""Training images and captions for a new concept (an embedding or a LoRA).

Two sources, one shape of data (`ConceptItem`: an image and its "filewords"):

* `bar_items`: the held-out bar of the shapes set (`shapes.HELD_OUT_SHAPES`), drawn
  in every colour, size and position, captioned with the concept's word where the base
  captions would say "bar" ("a small red easel-bar at the top left on a blue
  background");
* `folder_items`: A1111's dataset directory - every image in `data_root`, its filewords
  read from `<stem>.txt` beside it, or else from the file name (a leading number such as
  "00012-" dropped).

Prompts are made as A1111 makes them: a random line of a template file, with `[name]`
replaced by the concept's word and `[filewords]` by the item's filewords, optionally
with the comma-separated tags shuffled and each dropped with some probability.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from modules.errors import ParamsError
from modules.training.shapes import caption_for, make_sample

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LEADING_NUMBER = re.compile(r"^[-\d]+\s*")
FILEWORDS_TEMPLATE = "[filewords]"

DEFAULT_MODEL = Path("models/Stable-diffusion/easel-demo.safetensors")


@dataclass(frozen=True)
class ConceptItem:
    """One training image (H, W, 3) uint8 and the words that describe it."""

    image: np.ndarray
    filewords: str


def bar_items(word: str, *, count: int, seed: int, resolution: int) -> list[ConceptItem]:
    """`count` bar images with captions that name the bar `word`."""
    items = []
    for index in range(count):
        sample = make_sample(seed, index, resolution=resolution, shapes=("bar",))
        items.append(ConceptItem(sample.image, caption_for(replace(sample.labels, shape=word))))
    return items


def folder_items(data_root: str | Path, *, width: int, height: int,
                 field: str = "data_root") -> list[ConceptItem]:
    """Every readable image directly in `data_root`, resized to width x height."""
    folder = Path(data_root)
    if not str(data_root).strip() or not folder.is_dir():
        raise ParamsError(field, f"{str(data_root)!r} is not a directory")
    items = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # a damaged or foreign file is skipped, as A1111 does
        items.append(ConceptItem(np.asarray(image), _filewords(path)))
    if not items:
        raise ParamsError(field, f"no readable images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return items


def _filewords(image_path: Path) -> str:
    caption_file = image_path.with_suffix(".txt")
    if caption_file.is_file():
        return caption_file.read_text(encoding="utf-8", errors="replace").strip()
    return LEADING_NUMBER.sub("", image_path.stem).strip()


def read_template(templates_dir: Path, filename: str | None, *,
                  field: str = "template_filename") -> list[str]:
    """The non-empty lines of a template file, looked up by name inside `templates_dir`.

    None or "" means the plain `[filewords]` template. A name is never joined into a
    path: it must be one of the folder's `.txt` files.
    """
    if not filename:
        return [FILEWORDS_TEMPLATE]
    available = {p.name: p for p in templates_dir.glob("*.txt")} if templates_dir.is_dir() else {}
    path = available.get(filename)
    if path is None:
        raise ParamsError(field, f"{filename!r} is not a template in {templates_dir} "
                                 f"(have: {', '.join(sorted(available)) or 'none'})")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise ParamsError(field, f"{filename!r} holds no lines")
    return lines


@dataclass(frozen=True, kw_only=True)
class PromptOptions:
    """How a prompt is made from a template line and an item's filewords."""

    name: str
    template: tuple[str, ...] = (FILEWORDS_TEMPLATE,)
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0


def make_prompt(filewords: str, options: PromptOptions, rng: random.Random) -> str:
    """A random template line with `[name]` and (shuffled, thinned) `[filewords]` filled in."""
    tags = [tag.strip() for tag in filewords.split(",") if tag.strip()]
    if options.shuffle_tags:
        rng.shuffle(tags)
    if options.tag_drop_out > 0:
        tags = [tag for tag in tags if rng.random() >= options.tag_drop_out]
    line = options.template[rng.randrange(len(options.template))]
    return line.replace("[name]", options.name).replace("[filewords]", ", ".join(tags))
