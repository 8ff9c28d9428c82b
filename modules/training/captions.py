"""Captions -> the 77 token ids an SD1 text encoder reads.

SD1's convention (and A1111's for a prompt of one chunk): `[BOS] + tokens + [EOS]`,
padded to 77 with EOS, longer prompts cut to 75 tokens. Training the demo's text
encoder on exactly this layout lets Easel's normal prompt pipeline drive it.
"""

from __future__ import annotations

import torch

from modules.conditioning.tokenizer import ClipTokenizer

CONTEXT_LENGTH = 77


def token_ids(tokenizer: ClipTokenizer, captions: list[str], *,
              length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """(len(captions), length) int64 ids: BOS, at most length - 2 tokens, EOS padding."""
    rows = []
    for ids in tokenizer.encode_batch(list(captions)):
        body = [tokenizer.bos_id, *ids[: length - 2], tokenizer.eos_id]
        rows.append(body + [tokenizer.eos_id] * (length - len(body)))
    return torch.tensor(rows, dtype=torch.long)
