"""A1111's CLIP interrogator: a BLIP caption, then the best matches of each category.

The caption comes from `BlipForConditionalGeneration.generate` on the picture squashed
to BLIP's square size (bicubic) and normalised (A1111: 384, CLIP's mean and std), with
the settings `interrogate_clip_num_beams`, `interrogate_clip_min_length` and
`interrogate_clip_max_length` (no sampling).

Each category is a text file in `modules/assets/interrogate/`: its name is the file's
stem, and a `.topN` before `.txt` (`flavors.top3.txt`) asks for the N best lines (1
otherwise). Categories are read in file-name order (artists, flavors, mediums,
movements), at most `interrogate_clip_dict_limit` lines each (0: all), skipping those
named in `interrogate_clip_skip_categories`. The ranking is A1111's: CLIP's image and
text features, each normalised, `100 * cosine` turned into a softmax over the category,
the top N kept. The answer is `caption, match, match, ...` in category order; with
`interrogate_return_ranks` each match is written `(match:0.123)`, the softmax score.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from modules.models.interrogate_files import CONTEXT_LENGTH, TransformersModel

CATEGORY_DIR = Path(__file__).resolve().parents[2] / "assets" / "interrogate"
TOP_N = re.compile(r"\.top(\d+)$")


@dataclass(frozen=True)
class Category:
    name: str
    top: int
    items: tuple[str, ...]


def load_categories(folder: Path = CATEGORY_DIR) -> list[Category]:
    """Every `*.txt` list in `folder`, in file-name order, blank lines dropped."""
    categories = []
    for path in sorted(folder.glob("*.txt")):
        stem = path.stem
        match = TOP_N.search(stem)
        name = stem[:match.start()] if match else stem
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
        categories.append(Category(name, int(match.group(1)) if match else 1,
                                   tuple(line for line in lines if line)))
    return categories


def category_names(folder: Path = CATEGORY_DIR) -> list[str]:
    """The choices of `interrogate_clip_skip_categories`."""
    return [category.name for category in load_categories(folder)]


def pixels(image: Image.Image, model: TransformersModel) -> torch.Tensor:
    """`[1, 3, H, W]` as the model's image processor makes it: BLIP squashes the picture
    to its size, CLIP scales the shortest side and crops the centre; then mean / std."""
    image = image.convert("RGB")
    height, width = model.image_size
    if model.crop:
        scale = max(width / image.width, height / image.height)
        size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        image = image.crop((left, top, left + width, top + height))
    else:
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    array = (np.asarray(image, dtype=np.float32) / 255.0 - model.mean) / model.std
    return torch.from_numpy(array.astype(np.float32)).permute(2, 0, 1).unsqueeze(0)


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def caption(blip: TransformersModel, image: Image.Image, *, num_beams: int, min_length: int,
            max_length: int) -> str:
    """BLIP's caption of `image` (beam search, no sampling)."""
    inputs = pixels(image, blip).to(_device_of(blip.model), blip.model.dtype)
    ids = blip.model.generate(pixel_values=inputs, num_beams=max(1, int(num_beams)),
                              min_length=int(min_length), max_length=int(max_length),
                              do_sample=False)
    return blip.tokenizer.decode(ids[0], skip_special_tokens=True).strip()


@torch.inference_mode()
def image_features(clip: TransformersModel, image: Image.Image) -> torch.Tensor:
    """CLIP's normalised image embedding `[1, dim]` in float32."""
    inputs = pixels(image, clip).to(_device_of(clip.model), clip.model.dtype)
    features = _features(clip.model.get_image_features(pixel_values=inputs)).float()
    return features / features.norm(dim=-1, keepdim=True)


@torch.inference_mode()
def text_features(clip: TransformersModel, texts: list[str]) -> torch.Tensor:
    """CLIP's normalised text embeddings `[len(texts), dim]` (each text cut to 77 tokens)."""
    tokens = clip.tokenizer(list(texts), padding=True, truncation=True,
                            max_length=CONTEXT_LENGTH, return_tensors="pt")
    device = _device_of(clip.model)
    features = _features(clip.model.get_text_features(
        input_ids=tokens["input_ids"].to(device),
        attention_mask=tokens["attention_mask"].to(device))).float()
    return features / features.norm(dim=-1, keepdim=True)


def _features(output) -> torch.Tensor:
    """transformers 5 may answer an output object where 4 gave the tensor."""
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def rank(clip: TransformersModel, image: torch.Tensor, items: tuple[str, ...],
         top: int) -> list[tuple[str, float]]:
    """The `top` items by softmax(100 * cosine) over the category, with their scores."""
    if not items:
        return []
    similarity = (100.0 * image @ text_features(clip, list(items)).T).softmax(dim=-1)[0]
    scores, indices = similarity.topk(min(top, len(items)))
    return [(items[int(i)], float(s)) for s, i in zip(scores, indices)]


def interrogate(blip: TransformersModel, clip: TransformersModel, image: Image.Image,
                settings, categories: list[Category]) -> str:
    """`caption, match, ...` as A1111 writes it (see the module docstring)."""
    text = caption(blip, image, num_beams=settings["interrogate_clip_num_beams"],
                   min_length=settings["interrogate_clip_min_length"],
                   max_length=settings["interrogate_clip_max_length"])
    features = image_features(clip, image)
    limit = int(settings["interrogate_clip_dict_limit"])
    skipped = set(settings["interrogate_clip_skip_categories"])
    parts = [text]
    for category in categories:
        if category.name in skipped:
            continue
        items = category.items[:limit] if limit > 0 else category.items
        for match, score in rank(clip, features, items, category.top):
            parts.append(f"({match}:{score:.3f})" if settings["interrogate_return_ranks"]
                         else match)
    return ", ".join(parts)
