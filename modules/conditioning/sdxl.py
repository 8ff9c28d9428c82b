"""SDXL's extra conditioning vector (Podell et al., 2023, §2.2 "micro-conditioning").

Besides the text, the SDXL U-Net is told the image's original size, crop offsets and
target size (base), or original size, crop offsets and an aesthetic score (refiner).
Each number gets a 256-wide sinusoidal embedding; they are concatenated after the
pooled bigG text embedding into the ADM vector the U-Net's `label_emb` reads:

    base:    [pooled | orig_h, orig_w | crop_top, crop_left | target_h, target_w]   1280 + 6*256
    refiner: [pooled | orig_h, orig_w | crop_top, crop_left | aesthetic_score]      1280 + 5*256

A1111 uses the generation's (height, width) as both original and target size, crop
(0, 0), and aesthetic scores 6.0 for the prompt and 2.5 for the negative prompt.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modules.nn.timestep import timestep_embedding

EMBEDDING_WIDTH = 256


@dataclass(frozen=True, kw_only=True)
class SizeConditioning:
    """The image-size numbers SDXL is conditioned on (hashable: part of cache keys)."""

    width: int = 1024
    height: int = 1024
    original_width: int | None = None
    original_height: int | None = None
    crop_top: int = 0
    crop_left: int = 0
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5

    def numbers(self, *, refiner: bool, is_negative: bool) -> list[float]:
        """The scalars to embed, in the order the U-Net was trained with."""
        original = [self.original_height or self.height, self.original_width or self.width]
        crop = [self.crop_top, self.crop_left]
        if refiner:
            score = self.negative_aesthetic_score if is_negative else self.aesthetic_score
            return [*original, *crop, score]
        return [*original, *crop, self.height, self.width]


def sdxl_vector(pooled: torch.Tensor, size: SizeConditioning, *, refiner: bool,
                is_negative: bool) -> torch.Tensor:
    """ADM vector(s) for pooled text embeddings of shape (P,) or (B, P)."""
    numbers = torch.tensor(size.numbers(refiner=refiner, is_negative=is_negative),
                           device=pooled.device)
    sizes = timestep_embedding(numbers, EMBEDDING_WIDTH).flatten().to(pooled.dtype)
    sizes = sizes.expand(*pooled.shape[:-1], sizes.shape[0])
    return torch.cat([pooled, sizes], dim=-1)
