"""Prompts with emphasis -> T5 encoder states, for SD3 / SD3.5 and Flux.1.

T5 reads the whole prompt at once (no 75-token chunks): the text is split into its
emphasis segments (`(word:1.2)`, `[word]`; `BREAK` has no meaning for T5 and is dropped),
each segment is tokenized without specials, the pieces are joined, EOS is appended and
the ids are padded with 0 (or truncated, EOS kept last) to the family's length, as
diffusers' SD3 / Flux pipelines pad (SD3 256, Flux.1 dev 512, schnell 256). A prompt
without brackets therefore gives exactly the ids of the plain tokenizer call.

Emphasis is the CLIP rule applied to T5's output (A1111's "Original" mode, as Forge
does for T5): every token's state is multiplied by its weight, then the whole batch is
rescaled to its old mean (`encode.apply_emphasis`); padding and EOS weigh 1.0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modules.conditioning.chunking import BREAK_TEXT, BREAK_WEIGHT
from modules.conditioning.encode import apply_emphasis, parse_emphasis
from modules.conditioning.t5_tokenizer import EOS_ID, PAD_ID
from modules.devices import execution_device


@dataclass(frozen=True)
class WeightedT5Tokens:
    """ids (B, L) int64 and their emphasis weights (B, L) float32; `counts`: real tokens."""

    ids: torch.Tensor
    weights: torch.Tensor
    counts: tuple[int, ...]


def weighted_pieces(tokenizer, text: str, emphasis: str) -> tuple[list[int], list[float]]:
    """The ids of `text`'s emphasis segments (no specials) and each id's weight."""
    ids: list[int] = []
    weights: list[float] = []
    for segment, weight in parse_emphasis(text, emphasis):
        if segment == BREAK_TEXT and weight == BREAK_WEIGHT:
            continue
        pieces = tokenizer(segment, add_special_tokens=False).input_ids
        ids += pieces
        weights += [float(weight)] * len(pieces)
    return ids, weights


def t5_weighted_tokens(tokenizer, texts: Sequence[str], *, max_length: int,
                       emphasis: str = "Original") -> WeightedT5Tokens:
    """Texts -> EOS-terminated ids padded / truncated to `max_length`, with weights."""
    rows, row_weights, counts = [], [], []
    for text in texts:
        ids, weights = weighted_pieces(tokenizer, text, emphasis)
        counts.append(len(ids))
        ids, weights = ids[:max_length - 1] + [EOS_ID], weights[:max_length - 1] + [1.0]
        padding = max_length - len(ids)
        rows.append(ids + [PAD_ID] * padding)
        row_weights.append(weights + [1.0] * padding)
    return WeightedT5Tokens(torch.tensor(rows, dtype=torch.long),
                            torch.tensor(row_weights, dtype=torch.float32), tuple(counts))


def encode_t5(encoder, tokenizer, texts: Sequence[str], *, max_length: int,
              emphasis: str = "Original") -> torch.Tensor:
    """(B, max_length, d_model) T5 states of `texts`, emphasis applied (float32 out)."""
    tokens = t5_weighted_tokens(tokenizer, texts, max_length=max_length, emphasis=emphasis)
    device = execution_device(encoder)
    hidden = encoder(tokens.ids.to(device)).float()
    # Under --lowvram T5 runs on the CPU and its placer hands its output to the device.
    return apply_emphasis(hidden, tokens.weights.to(hidden.device), emphasis)
