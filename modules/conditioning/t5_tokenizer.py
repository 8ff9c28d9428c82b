"""The T5 v1.1 SentencePiece tokenizer, loaded offline from the vocabulary shipped with Easel.

SD3, SD3.5 and Flux.1 read prompts with Google's T5 v1.1 encoder ("T5-XXL"). Its
tokenizer (32,000 pieces + 100 sentinel tokens) ships as `modules/assets/t5_tokenizer/`
(Apache-2.0, see the NOTICE there); transformers builds `T5TokenizerFast` from that folder
without any hub access. The ids end with EOS (1) and carry no BOS.

`tokenize_t5` pads and truncates to a fixed length as diffusers' SD3 / Flux pipelines do
(`padding="max_length"`, `truncation=True`: SD3 256 tokens, Flux dev 512, schnell 256);
those pipelines do not pass the attention mask to the encoder, so `t5_prompt_embeds`
uses it only when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "t5_tokenizer"

PAD_ID = 0
EOS_ID = 1
SD3_MAX_LENGTH = 256
FLUX_DEV_MAX_LENGTH = 512
FLUX_SCHNELL_MAX_LENGTH = 256


@dataclass(frozen=True)
class T5Tokens:
    """ids (B, L) int64, padded with 0 after EOS; mask (B, L): 1 on text and EOS, 0 on pad."""

    ids: torch.Tensor
    mask: torch.Tensor


def load_t5_tokenizer(directory: Path = ASSET_DIR):
    """A new `transformers.T5TokenizerFast` from `directory`; the caller keeps it."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(directory), local_files_only=True)


def tokenize_t5(tokenizer, prompts: list[str], max_length: int) -> T5Tokens:
    """Prompts -> ids padded / truncated to `max_length` (EOS kept last when truncated)."""
    batch = tokenizer(list(prompts), padding="max_length", max_length=max_length,
                      truncation=True, return_tensors="pt")
    return T5Tokens(ids=batch.input_ids.long(), mask=batch.attention_mask.long())


def t5_prompt_embeds(encoder, tokenizer, prompts: list[str], max_length: int, *,
                     use_mask: bool = False) -> torch.Tensor:
    """(B, max_length, d_model) final hidden states of a `modules.nn.t5_encoder.T5TextEncoder`."""
    tokens = tokenize_t5(tokenizer, prompts, max_length)
    device = encoder.transformer.shared.weight.device
    mask = tokens.mask.to(device) if use_mask else None
    with torch.no_grad():
        return encoder(tokens.ids.to(device), mask)
