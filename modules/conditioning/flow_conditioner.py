"""Prompts -> conds for the rectified-flow families: SD3 / SD3.5 (MMDiT) and Flux.1.

`FlowConditioner` is a `Conditioner`: prompt schedules, `AND`, the cache and the CLIP
side (emphasis, 75-token chunks, `BREAK`, embeddings) are the same; only how one batch
of texts becomes a `Cond` differs. The `Cond` keeps its two fields: `crossattn` is the
transformer's text sequence (`context`) and `vector` its pooled input (`y`).

* SD3.x (Esser et al., 2024, sec. 2 and 5.2; as diffusers' `StableDiffusion3Pipeline`
  builds it): the CLIP-L (768) and CLIP-G (1280) penultimate hidden states, joined on the
  channel axis and zero-padded to the context width (4096), then the T5 states on the
  token axis: context (77 * chunks + 256, 4096). Without a T5 encoder its part is zeros.
  y = [CLIP-L pooled | CLIP-G pooled] (2048).
* Flux.1: context = the T5 states (512 tokens for dev, 256 for schnell); y = CLIP-L's
  pooled output (768). CLIP-L's hidden states are not used.

Clip skip N > 1 moves both SD3 CLIP encoders N - 1 layers further back (diffusers'
`clip_skip=N-1`: `hidden_states[-(N + 1)]`); Flux ignores it. T5 states carry the
prompt's emphasis too (`t5_prompts.py`). The pooled vectors come from each CLIP's first
chunk, unweighted, as for SDXL.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from modules.conditioning.conditioner import DEFAULT_SETTINGS, Conditioner, ConditioningSettings
from modules.conditioning.conds import Cond
from modules.conditioning.embeddings import EmbeddingTable
from modules.conditioning.encode import EncodedBatch
from modules.conditioning.prompt_parser import extract_extra_networks, strip_comments
from modules.conditioning.sdxl import SizeConditioning
from modules.conditioning.t5_prompts import encode_t5, t5_weighted_tokens
from modules.conditioning.t5_tokenizer import (
    FLUX_DEV_MAX_LENGTH,
    FLUX_SCHNELL_MAX_LENGTH,
    SD3_MAX_LENGTH,
    load_t5_tokenizer,
)
from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.families import TextEncoderSpec

T5_NAME = "t5xxl"


def context_width(family) -> int:
    """The width of the transformer's text tokens (4096 for every released model)."""
    config = family.diffusion
    return getattr(config, "context_in_channels", None) or config.context_in_dim


def t5_max_length(family) -> int:
    """How many T5 tokens the family reads: the spec's `max_tokens`, else diffusers' default."""
    for spec in family.text_encoders:
        if spec.name == T5_NAME and getattr(spec.config, "max_tokens", None):
            return spec.config.max_tokens
    if family.architecture == "sd3":
        return SD3_MAX_LENGTH
    guided = getattr(family.diffusion, "guidance_embed", False)
    return FLUX_DEV_MAX_LENGTH if guided else FLUX_SCHNELL_MAX_LENGTH


class FlowConditioner(Conditioner):
    """Encodes prompts for an SD3.x or Flux.1 family (`family.architecture`).

    `encoders` follow `family.text_encoders` (SD3: CLIP-L, CLIP-G, T5; Flux: CLIP-L, T5);
    the T5 entry may be None (SD3 then gets zeros in its place; Flux cannot run without).
    `t5_tokenizer` is loaded from the shipped vocabulary on first use when not given.
    """

    def __init__(self, *, encoders: Sequence, tokenizer: ClipTokenizer, family,
                 t5_tokenizer=None, cache_size: int = 64) -> None:
        super().__init__(encoders=encoders, tokenizer=tokenizer, family=family,
                         cache_size=cache_size)
        self._t5_tokenizer = t5_tokenizer
        self._t5_lock = threading.Lock()

    @property
    def t5_tokenizer(self):
        with self._t5_lock:
            if self._t5_tokenizer is None:
                self._t5_tokenizer = load_t5_tokenizer()
            return self._t5_tokenizer

    @property
    def t5_encoder(self):
        return self.encoder_named(T5_NAME)

    def encoder_named(self, name: str):
        for spec, encoder in zip(self.family.text_encoders, self.encoders):
            if spec.name == name:
                return encoder
        return None

    # ---- encoding ---------------------------------------------------------------------

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, is_negative: bool = False,
                     settings: ConditioningSettings = DEFAULT_SETTINGS,
                     size: SizeConditioning | None = None,
                     embeddings: EmbeddingTable | None = None) -> list[Cond]:
        """Encode texts (already free of schedules) as one batch: one `Cond` each."""
        if not texts:
            return []
        clip = self.encode_clip(texts, settings, embeddings)
        t5 = self.encode_t5_states(texts, settings)
        if self.family.architecture == "flux":
            if t5 is None:
                raise ValueError(f"{self.family.label} needs a T5-XXL text encoder")
            context, pooled = t5, clip["clip_l"].pooled.float()
        else:
            context, pooled = sd3_context(clip["clip_l"], clip["clip_g"], t5,
                                          width=context_width(self.family),
                                          t5_length=t5_max_length(self.family))
        return [Cond(context[i], pooled[i]) for i in range(len(texts))]

    def encode_clip(self, texts: Sequence[str], settings: ConditioningSettings,
                    embeddings: EmbeddingTable | None) -> dict[str, EncodedBatch]:
        """Each CLIP encoder's chunked, emphasis-weighted output, by encoder name."""
        return {spec.name: self.encode_with(spec, encoder, texts, settings, embeddings)
                for spec, encoder in zip(self.family.text_encoders, self.encoders)
                if spec.name != T5_NAME}

    def encode_t5_states(self, texts: Sequence[str],
                         settings: ConditioningSettings) -> torch.Tensor | None:
        """(B, L, d_model) T5 states, or None without a T5 encoder."""
        encoder = self.t5_encoder
        if encoder is None:
            return None
        return encode_t5(encoder, self.t5_tokenizer, texts,
                         max_length=t5_max_length(self.family), emphasis=settings.emphasis)

    def clip_skip_for(self, spec: TextEncoderSpec, settings: ConditioningSettings) -> int | None:
        """SD3: N > 1 takes `hidden_states[-(N + 1)]` of both CLIPs; Flux: never."""
        if settings.clip_skip < 1:
            raise ValueError(f"clip_skip must be at least 1, got {settings.clip_skip}")
        if self.family.architecture == "flux" or settings.clip_skip == 1:
            return None
        return settings.clip_skip + 1

    # ---- UI token counter -------------------------------------------------------------

    def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True,
                    settings: ConditioningSettings = DEFAULT_SETTINGS,
                    embeddings: EmbeddingTable | None = None) -> tuple[int, int]:
        """SD3: CLIP's count (its chunks); Flux: T5 tokens of the prompt / the T5 length."""
        if self.family.architecture != "flux":
            return super().token_count(prompt, steps=steps, is_positive=is_positive,
                                       settings=settings, embeddings=embeddings)
        text = strip_comments(prompt) if settings.enable_prompt_comments else prompt
        text = extract_extra_networks(text)[0]
        tokens = t5_weighted_tokens(self.t5_tokenizer, [text], emphasis=settings.emphasis,
                                    max_length=t5_max_length(self.family))
        return tokens.counts[0], t5_max_length(self.family)


def sd3_context(clip_l: EncodedBatch, clip_g: EncodedBatch, t5: torch.Tensor | None, *,
                width: int, t5_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's (context, pooled): [CLIP-L | CLIP-G | 0...] tokens then T5 tokens; pooled L|G."""
    clip = torch.cat([clip_l.hidden, clip_g.hidden], dim=-1).float()
    if clip.shape[-1] > width:
        raise ValueError(f"CLIP widths {clip.shape[-1]} exceed the context width {width}")
    clip = F.pad(clip, (0, width - clip.shape[-1]))
    if t5 is None:
        t5 = clip.new_zeros(clip.shape[0], t5_length, width)
    pooled = torch.cat([clip_l.pooled, clip_g.pooled], dim=-1).float()
    return torch.cat([clip, t5.float().to(clip.device)], dim=1), pooled
