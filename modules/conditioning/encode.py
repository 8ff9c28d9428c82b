"""Run one text encoder over a batch of prompt texts, with emphasis weighting.

For each text: emphasis parse (per the emphasis mode), tokenize each segment, chunk
(`chunking.py`). The batch is padded to the same chunk count with empty chunks; chunk i
of every text is encoded together, so that, as in A1111, the "Original" emphasis mean
is taken over the whole (batch, 77, C) tensor of that chunk:

    m = z.mean();  z = z * multipliers[..., None];  z = z * (m / z.mean())

"No norm" keeps the multiplied z; "Ignore" parses (brackets vanish, BREAK works) but
does not weight; "None" does not parse at all. Only the hidden states are weighted;
the pooled output (SDXL bigG) comes from the first chunk, unweighted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modules.conditioning.chunking import PromptChunk, SpecialIds, build_chunks, empty_chunk
from modules.conditioning.embeddings import EmbeddingTable
from modules.conditioning.prompt_parser import parse_prompt_attention
from modules.conditioning.tokenizer import ClipTokenizer
from modules.devices import execution_device
from modules.nn.text_encoders import TextEncoder

EMPHASIS_MODES = ("Original", "No norm", "Ignore", "None")


def parse_emphasis(text: str, mode: str) -> list[list]:
    """`[text, weight]` segments of `text` under an emphasis mode."""
    if mode not in EMPHASIS_MODES:
        raise ValueError(f"emphasis: unknown mode {mode!r}; expected one of {EMPHASIS_MODES}")
    if mode == "None":
        return [[text, 1.0]]
    return parse_prompt_attention(text)


def emphasis_infotext(texts: Sequence[str], mode: str) -> str | None:
    """The infotext "Emphasis" value: the mode, when it is not "Original" and a prompt has
    brackets that it could change; None otherwise (A1111 writes the key only then)."""
    if mode == "Original" or not any("(" in text or "[" in text for text in texts):
        return None
    return mode


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor, mode: str) -> torch.Tensor:
    """Weight the encoded chunk z (B, 77, C) by per-token multipliers (B, 77)."""
    if mode in ("Ignore", "None"):
        return z
    weighted = z * multipliers.to(z)[..., None]
    if mode == "No norm":
        return weighted
    # Restore the chunk's mean (a zero mean, as of untrained layer norms, is left alone).
    new_mean = weighted.mean()
    if new_mean == 0:
        return weighted
    return weighted * (z.mean() / new_mean)


def chunk_texts(texts: Sequence[str], *, tokenizer: ClipTokenizer, emphasis: str,
                comma_backtrack: int, embeddings: EmbeddingTable | None,
                encoder_name: str) -> list[tuple[list[PromptChunk], int]]:
    """(chunks, token count) of each text."""
    ids = SpecialIds(tokenizer.bos_id, tokenizer.eos_id, tokenizer.comma_id)
    result = []
    for text in texts:
        segments = parse_emphasis(text, emphasis)
        token_ids = tokenizer.encode_batch([segment[0] for segment in segments])
        result.append(build_chunks(segments, token_ids, comma_backtrack=comma_backtrack,
                                   embeddings=embeddings, encoder_name=encoder_name, ids=ids))
    return result


@dataclass(frozen=True)
class EncodedBatch:
    """hidden: (B, 77 * chunks, C); pooled: (B, P) or None."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None


def encode_chunks(encoder: TextEncoder, per_text: Sequence[Sequence[PromptChunk]], *,
                  emphasis: str, clip_skip: int | None,
                  ids: SpecialIds = SpecialIds()) -> EncodedBatch:
    """Encode texts already cut into chunks; shorter texts get empty chunks appended."""
    count = max(len(chunks) for chunks in per_text)
    filler = empty_chunk(ids)
    device = execution_device(encoder)  # the device even when --medvram keeps it in RAM
    hidden, pooled = [], None
    for index in range(count):
        batch = [chunks[index] if index < len(chunks) else filler for chunks in per_text]
        tokens = chunk_ids(batch, pad_with_eos=encoder.config.pad_with_eos, eos_id=ids.eos)
        tokens = tokens.to(device)
        multipliers = torch.tensor([chunk.multipliers for chunk in batch], device=device)
        embeds = spliced_embeddings(encoder, tokens, batch)
        out = encoder(tokens, clip_skip=clip_skip, inputs_embeds=embeds)
        hidden.append(apply_emphasis(out.hidden, multipliers, emphasis))
        # The pooled output is the first chunk's, as in A1111.
        if index == 0:
            pooled = out.pooled
    return EncodedBatch(torch.cat(hidden, dim=1), pooled)


def chunk_ids(batch: Sequence[PromptChunk], *, pad_with_eos: bool, eos_id: int) -> torch.Tensor:
    """(B, 77) ids; OpenCLIP encoders see 0 after the first EOS instead of EOS padding."""
    ids = torch.tensor([chunk.tokens for chunk in batch], dtype=torch.long)
    if not pad_with_eos:
        first_eos = (ids == eos_id).int().argmax(dim=1, keepdim=True)
        after = torch.arange(ids.shape[1])[None] > first_eos
        ids = ids.masked_fill(after, 0)
    return ids


def spliced_embeddings(encoder: TextEncoder, ids: torch.Tensor,
                       batch: Sequence[PromptChunk]) -> torch.Tensor | None:
    """Token embeddings with textual-inversion vectors spliced in, or None if there are none."""
    if not any(chunk.fixes for chunk in batch):
        return None
    embeds = encoder.token_embedding(ids).clone()
    for row, chunk in enumerate(batch):
        for fix in chunk.fixes:
            end = fix.position + fix.vectors.shape[0]
            embeds[row, fix.position:end] = fix.vectors.to(embeds)
    return embeds
