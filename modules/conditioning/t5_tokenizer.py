"""The T5 v1.1 SentencePiece tokenizer, loaded offline from the vocabulary shipped with Easel.

SD3, SD3.5 and Flux.1 read prompts with Google's T5 v1.1 encoder ("T5-XXL"). Its
tokenizer (32,000 pieces + 100 sentinel tokens) ships as `modules/assets/t5_tokenizer/`
(Apache-2.0, see the NOTICE there); transformers builds `T5TokenizerFast` from that folder
without any hub access. The ids end with EOS (1) and carry no BOS.
"""

from __future__ import annotations

from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "t5_tokenizer"

PAD_ID = 0
EOS_ID = 1


def load_t5_tokenizer(directory: Path = ASSET_DIR):
    """A new `transformers.T5TokenizerFast` from `directory`; the caller keeps it."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(directory), local_files_only=True)
