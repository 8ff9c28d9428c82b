"""The hook through which textual-inversion embeddings reach the text encoders.

Textual inversion (Gal et al., 2022) learns a few token vectors for a new word. A
prompt uses one by its name; the chunker finds the name's token ids in the tokenized
prompt (longest match first, keyed by the first token, as A1111 does), reserves one
placeholder position per vector, never splitting an embedding across two 75-token
chunks, and the encoder gets those vectors spliced into its token embeddings.

This module only defines the typed table; reading embedding files (.pt, .safetensors,
PNG) is the job of `modules/networks/embeddings.py`, which builds an `EmbeddingTable`
and passes it to the conditioner per request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class TextualInversion:
    """One embedding: its trigger word's token ids and its vectors per text encoder.

    `vectors` maps an encoder name ("clip_l", "clip_h", "clip_g") to an (n, C) tensor;
    SDXL embeddings carry both "clip_l" and "clip_g".
    """

    name: str
    token_ids: tuple[int, ...]
    vectors: Mapping[str, torch.Tensor]

    def vectors_for(self, encoder_name: str) -> torch.Tensor | None:
        return self.vectors.get(encoder_name)


class EmbeddingTable:
    """An immutable lookup of embeddings by the token ids of their names."""

    def __init__(self, embeddings: Iterable[TextualInversion] = ()) -> None:
        by_first: dict[int, list[TextualInversion]] = {}
        for embedding in embeddings:
            if not embedding.token_ids:
                raise ValueError(f"embedding {embedding.name!r} has no token ids")
            by_first.setdefault(embedding.token_ids[0], []).append(embedding)
        # Longest names first, so "style-extra" wins over "style".
        self._by_first = {
            first: tuple(sorted(group, key=lambda e: len(e.token_ids), reverse=True))
            for first, group in by_first.items()
        }

    @staticmethod
    def from_vectors(tokenize: Callable[[str], list[int]],
                     vectors_by_name: Mapping[str, Mapping[str, torch.Tensor]]) -> "EmbeddingTable":
        """Build from `{name: {encoder_name: (n, C)}}`, tokenizing each name with `tokenize`."""
        return EmbeddingTable(
            TextualInversion(name, tuple(tokenize(name)), vectors)
            for name, vectors in vectors_by_name.items()
        )

    def match(self, ids: Sequence[int], position: int,
              encoder_name: str) -> TextualInversion | None:
        """The embedding whose name starts at `ids[position]` and has vectors for the encoder."""
        for embedding in self._by_first.get(ids[position], ()):
            length = len(embedding.token_ids)
            if tuple(ids[position:position + length]) != embedding.token_ids:
                continue
            if embedding.vectors_for(encoder_name) is not None:
                return embedding
        return None

    def __len__(self) -> int:
        return sum(len(group) for group in self._by_first.values())
