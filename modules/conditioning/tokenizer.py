"""The CLIP byte-pair tokenizer, built offline from the vocabulary shipped with Easel.

Every Stable Diffusion text encoder (CLIP ViT-L/14 in SD1 and SDXL, OpenCLIP ViT-H/14
in SD2, ViT-bigG/14 in SDXL) reads the same 49,408-entry BPE vocabulary of OpenAI CLIP
(Radford et al., 2021). We ship it as `modules/assets/clip_tokenizer/{vocab,merges}`
(see the NOTICE there) and build transformers' `CLIPTokenizer` from those two files,
so no hub access is ever needed. The ids equal open_clip's `SimpleTokenizer`.

Padding is not done here: SD1 pads with EOS, OpenCLIP with 0 after the first EOS, and
the prompt chunker in `modules/conditioning` knows which.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "clip_tokenizer"

BOS_ID = 49406
EOS_ID = 49407
COMMA_ID = 267  # ",</w>"


class ClipTokenizer:
    """A lazily built CLIP tokenizer; one per model manager, not a module global.

    `encode` gives ids without BOS/EOS, which is what the 75-token chunker wants.
    """

    bos_id: int = BOS_ID
    eos_id: int = EOS_ID
    comma_id: int = COMMA_ID

    def __init__(self, *, directory: Path = ASSET_DIR) -> None:
        self.directory = Path(directory)

    @cached_property
    def hf_tokenizer(self):
        """transformers' `CLIPTokenizer` over the shipped vocab.json and merges.txt."""
        from transformers import CLIPTokenizer

        # Read the two files ourselves and hand over plain data: no config lookup, no hub.
        vocab = json.loads((self.directory / "vocab.json").read_text(encoding="utf-8"))
        lines = (self.directory / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines
                  if line and not line.startswith("#version")]
        return CLIPTokenizer(vocab=vocab, merges=merges)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without the BOS/EOS specials."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, without specials (one tokenizer call for all)."""
        if not texts:
            return []
        return self.hf_tokenizer(list(texts), add_special_tokens=False,
                                 truncation=False)["input_ids"]

    def encode_with_specials(self, text: str) -> list[int]:
        """`[BOS] + ids + [EOS]`, as a plain `tokenizer(text)` gives for CLIP."""
        return [self.bos_id, *self.encode(text), self.eos_id]

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` (specials dropped), e.g. for showing an embedding's tokens."""
        return self.hf_tokenizer.decode(ids, skip_special_tokens=True)
