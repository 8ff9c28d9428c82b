"""Weighted prompt segments -> 77-token chunks, A1111's way.

CLIP reads at most 77 positions, so a long prompt is cut into chunks of 75 tokens,
each wrapped as `[BOS] + 75 tokens (padded with EOS) + [EOS]` and encoded on its own;
the encodings are concatenated along the token axis. Every token carries the weight of
its emphasis segment (BOS, EOS and padding carry 1.0).

* `BREAK` closes the current chunk at once (it is padded to 75).
* Comma backtrack: when a chunk is full and the next token is not a comma, and the last
  comma lies within the last `comma_backtrack` tokens, the tokens after that comma move
  to the next chunk, so that phrases stay whole.
* A textual-inversion embedding takes one position per vector and never straddles two
  chunks: if it does not fit, the chunk is closed first.

Token counting follows A1111's counter: each closed chunk counts 75, the last chunk its
real length. OpenCLIP's zero padding after the first EOS is applied later, at encode
time, because it depends on the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from modules.conditioning.embeddings import EmbeddingTable

CHUNK_LENGTH = 75
PLACEHOLDER_ID = 0  # token id under an embedding's vectors (replaced before the encoder)
BREAK_TEXT = "BREAK"
BREAK_WEIGHT = -1


@dataclass(frozen=True)
class SpecialIds:
    bos: int = 49406
    eos: int = 49407
    comma: int = 267


@dataclass(frozen=True)
class EmbeddingFix:
    """Vectors (n, C) to splice in at positions `position .. position + n - 1` of a chunk."""

    position: int
    vectors: torch.Tensor


@dataclass(frozen=True)
class PromptChunk:
    """77 token ids, their weights, and the embedding vectors to splice in."""

    tokens: tuple[int, ...]
    multipliers: tuple[float, ...]
    fixes: tuple[EmbeddingFix, ...] = ()


def empty_chunk(ids: SpecialIds = SpecialIds()) -> PromptChunk:
    """The chunk of an empty prompt: BOS then EOS everywhere."""
    length = CHUNK_LENGTH + 2
    return PromptChunk((ids.bos,) + (ids.eos,) * (length - 1), (1.0,) * length)


@dataclass
class _OpenChunk:
    tokens: list[int] = field(default_factory=list)
    multipliers: list[float] = field(default_factory=list)
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset, vectors)


class ChunkBuilder:
    """Accumulates weighted tokens into closed `PromptChunk`s."""

    def __init__(self, *, comma_backtrack: int = 20, ids: SpecialIds = SpecialIds()) -> None:
        self.comma_backtrack = comma_backtrack
        self.ids = ids
        self.chunks: list[PromptChunk] = []
        self.current = _OpenChunk()
        self.last_comma = -1
        self.token_count = 0

    def close(self, *, is_last: bool = False) -> None:
        """Pad the open chunk to 75, wrap it in BOS/EOS and start a new one."""
        chunk = self.current
        self.token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
        padding = CHUNK_LENGTH - len(chunk.tokens)
        tokens = (self.ids.bos, *chunk.tokens, *(self.ids.eos,) * padding, self.ids.eos)
        multipliers = (1.0, *chunk.multipliers, *(1.0,) * padding, 1.0)
        # Fix offsets count from after BOS.
        fixes = tuple(EmbeddingFix(offset + 1, vectors) for offset, vectors in chunk.fixes)
        self.chunks.append(PromptChunk(tokens, multipliers, fixes))
        self.current = _OpenChunk()
        self.last_comma = -1

    def add_token(self, token: int, weight: float) -> None:
        self.prepare_for(token)
        self.current.tokens.append(token)
        self.current.multipliers.append(weight)

    def prepare_for(self, token: int) -> None:
        """Before each token: note commas, backtrack to a comma, close a full chunk."""
        if token == self.ids.comma:
            self.last_comma = len(self.current.tokens)
        elif self.should_backtrack():
            self.move_tail_after_comma()
        if len(self.current.tokens) == CHUNK_LENGTH:
            self.close()

    def should_backtrack(self) -> bool:
        length = len(self.current.tokens)
        return (self.comma_backtrack != 0 and length == CHUNK_LENGTH and self.last_comma != -1
                and length - self.last_comma <= self.comma_backtrack)

    def move_tail_after_comma(self) -> None:
        """Close the chunk just after its last comma; what followed opens the next chunk."""
        split = self.last_comma + 1
        old = self.current
        tail = _OpenChunk(old.tokens[split:], old.multipliers[split:],
                          [(offset - split, v) for offset, v in old.fixes if offset >= split])
        self.current = _OpenChunk(old.tokens[:split], old.multipliers[:split],
                                  [(offset, v) for offset, v in old.fixes if offset < split])
        self.close()
        self.current = tail

    def add_embedding(self, vectors: torch.Tensor, weight: float) -> None:
        """Reserve one placeholder per vector, in one chunk."""
        count = vectors.shape[0]
        if len(self.current.tokens) + count > CHUNK_LENGTH:
            self.close()
        self.current.fixes.append((len(self.current.tokens), vectors))
        self.current.tokens.extend([PLACEHOLDER_ID] * count)
        self.current.multipliers.extend([weight] * count)

    def finish(self) -> tuple[list[PromptChunk], int]:
        """Close the last chunk (an empty prompt still gives one chunk)."""
        if self.current.tokens or not self.chunks:
            self.close(is_last=True)
        return self.chunks, self.token_count


def build_chunks(segments: Sequence[Sequence], token_ids: Sequence[Sequence[int]], *,
                 comma_backtrack: int = 20, embeddings: EmbeddingTable | None = None,
                 encoder_name: str = "clip_l",
                 ids: SpecialIds = SpecialIds()) -> tuple[list[PromptChunk], int]:
    """Chunks and token count of one prompt.

    `segments` are `[text, weight]` pairs (from `parse_prompt_attention`), `token_ids`
    the ids of each segment's text, without specials.
    """
    builder = ChunkBuilder(comma_backtrack=comma_backtrack, ids=ids)
    for (text, weight), tokens in zip(segments, token_ids):
        if text == BREAK_TEXT and weight == BREAK_WEIGHT:
            builder.close()
            continue
        _add_segment(builder, tokens, weight, embeddings, encoder_name)
    return builder.finish()


def _add_segment(builder: ChunkBuilder, tokens: Sequence[int], weight: float,
                 embeddings: EmbeddingTable | None, encoder_name: str) -> None:
    position = 0
    while position < len(tokens):
        embedding = embeddings.match(tokens, position, encoder_name) if embeddings else None
        if embedding is None:
            builder.add_token(tokens[position], weight)
            position += 1
            continue
        # The comma / full-chunk checks run before an embedding too, as for any token.
        builder.prepare_for(tokens[position])
        builder.add_embedding(embedding.vectors_for(encoder_name), weight)
        position += len(embedding.token_ids)
