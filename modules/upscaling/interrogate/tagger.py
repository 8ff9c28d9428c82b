"""DeepBooru tags as A1111 writes them, from the tagger network's probabilities.

The picture is fitted into 512x512 with A1111's "Resize and fill" (the borders filled
from the picture's edges), given to the network as `[1, 512, 512, 3]` in [0, 1]. Tags
below `interrogate_deepbooru_score_threshold` and the `rating:*` tags are dropped; the
rest are sorted by name (`deepbooru_sort_alpha`) or by falling probability; the tags
listed in `deepbooru_filter_tags` (comma-separated, spaces or underscores) are removed;
then underscores become spaces (`deepbooru_use_spaces`), `\\`, `(` and `)` are escaped
with a backslash (`deepbooru_escape`), and with `interrogate_return_ranks` each tag is
written `(tag:0.987)`. The answer joins them with ", ".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from modules.imaging.resize import resize_image
from modules.models.interrogate_files import DEEPBOORU_SIZE, DeepDanbooruNet

SPECIAL = re.compile(r"([\\()])")
RESIZE_AND_FILL = 2  # A1111's img2img resize mode index


@torch.inference_mode()
def probabilities(network: DeepDanbooruNet, image: Image.Image) -> np.ndarray:
    """One probability per tag for `image`."""
    picture = resize_image(RESIZE_AND_FILL, image.convert("RGB"), DEEPBOORU_SIZE, DEEPBOORU_SIZE)
    array = np.asarray(picture, dtype=np.float32)[None] / 255.0
    weight = next(network.parameters())
    batch = torch.from_numpy(array).to(weight.device, weight.dtype)
    return network(batch)[0].float().cpu().numpy()


def tag_text(tags: Sequence[str], scores: np.ndarray, settings: Mapping) -> str:
    """A1111's DeepBooru answer for one picture's scores (see the module docstring)."""
    threshold = float(settings["interrogate_deepbooru_score_threshold"])
    kept = {tag: float(score) for tag, score in zip(tags, scores)
            if score >= threshold and not tag.startswith("rating:")}
    if settings["deepbooru_sort_alpha"]:
        order = sorted(kept)
    else:
        order = sorted(kept, key=lambda tag: -kept[tag])
    filtered = {item.strip().replace(" ", "_")
                for item in str(settings["deepbooru_filter_tags"]).split(",")}
    parts = []
    for tag in order:
        if tag in filtered:
            continue
        text = tag.replace("_", " ") if settings["deepbooru_use_spaces"] else tag
        if settings["deepbooru_escape"]:
            text = SPECIAL.sub(r"\\\1", text)
        if settings["interrogate_return_ranks"]:
            text = f"({text}:{kept[tag]:.3f})"
        parts.append(text)
    return ", ".join(parts)
