"""Prompts -> the typed conds of `modules/conditioning/conds.py`, with A1111's semantics.

A positive prompt is split on `AND` into weighted sub-prompts (`MultiCond`); each
sub-prompt, and each negative prompt, is expanded into its step schedule
(`ScheduledCond`); the texts of one schedule are encoded together as one batch (so the
emphasis mean is shared, as in A1111) by every text encoder of the family:

* SD1 / SD2: the context is the encoder's hidden states, (77 * chunks, C).
* SDXL: context = concat(CLIP-L hidden, bigG hidden) along channels; the ADM vector is
  bigG's pooled output followed by the size embeddings (`sdxl.py`). An all-empty
  negative prompt gives zero text embeddings (size embeddings stay).
* Clip skip: SD1's CLIP-L uses hidden_states[-N] + final norm; SDXL's CLIP-L only with
  `sdxl_clip_l_skip` (then hidden_states[-N], no norm); OpenCLIP encoders ignore it.

Prompts given to `encode_*` must already be cleaned of comments and extra-network tags
(that is `processing`'s job, which also activates the networks). Results are cached per
`Conditioner` (LRU), keyed on the prompt, steps and every setting that changes them.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from modules.conditioning.chunking import CHUNK_LENGTH, SpecialIds
from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.conditioning.embeddings import EmbeddingTable
from modules.conditioning.encode import EncodedBatch, chunk_texts, encode_chunks
from modules.conditioning.prompt_parser import (
    extract_extra_networks,
    get_learned_conditioning_prompt_schedules,
    split_and_weights,
    step_resolver,
    strip_comments,
)
from modules.conditioning.prompt_schedule import schedule_prompt
from modules.conditioning.sdxl import SizeConditioning, sdxl_vector
from modules.conditioning.tokenizer import ClipTokenizer
from modules.models.families import Family, TextEncoderSpec
from modules.nn.text_encoders import TextEncoder


@dataclass(frozen=True, kw_only=True)
class ConditioningSettings:
    """The settings that change how a prompt is encoded (A1111 option names in comments)."""

    emphasis: str = "Original"  # emphasis
    clip_skip: int = 1  # CLIP_stop_at_last_layers
    sdxl_clip_l_skip: bool = False  # sdxl_clip_l_skip
    comma_padding_backtrack: int = 20  # comma_padding_backtrack
    use_old_scheduling: bool = False  # use_old_scheduling
    enable_prompt_comments: bool = True  # enable_prompt_comments (token counter only)


DEFAULT_SETTINGS = ConditioningSettings()


class Conditioner:
    """Encodes prompts with a family's text encoders; one per loaded model."""

    def __init__(self, *, encoders: Sequence[TextEncoder], tokenizer: ClipTokenizer,
                 family: Family, cache_size: int = 64) -> None:
        if len(encoders) != len(family.text_encoders):
            raise ValueError(f"{family.label} needs {len(family.text_encoders)} text encoders, "
                             f"got {len(encoders)}")
        self.encoders = tuple(encoders)
        self.tokenizer = tokenizer
        self.family = family
        self.cache_size = cache_size
        self._cache: OrderedDict[Hashable, ScheduledCond] = OrderedDict()
        self._lock = threading.Lock()

    # ---- public entry points ----------------------------------------------------------

    def encode_batch(self, prompts: Sequence[str], *, steps: int, hires_steps: int | None = None,
                     settings: ConditioningSettings = DEFAULT_SETTINGS,
                     size: SizeConditioning | None = None, embeddings: EmbeddingTable | None = None,
                     cache_token: Hashable = None) -> list[MultiCond]:
        """Positive prompts: `AND` parts, each scheduled over `steps` (or the hires pass)."""
        options = dict(steps=steps, hires_steps=hires_steps, settings=settings, size=size,
                       embeddings=embeddings, cache_token=cache_token, is_negative=False)
        return [
            MultiCond(tuple((self.scheduled(text, **options), weight)
                            for text, weight in split_and_weights(prompt)))
            for prompt in prompts
        ]

    def encode_negative_batch(self, prompts: Sequence[str], *, steps: int,
                              hires_steps: int | None = None,
                              settings: ConditioningSettings = DEFAULT_SETTINGS,
                              size: SizeConditioning | None = None,
                              embeddings: EmbeddingTable | None = None,
                              cache_token: Hashable = None) -> list[ScheduledCond]:
        """Negative prompts: scheduled, never split on `AND`."""
        return [
            self.scheduled(prompt, steps=steps, hires_steps=hires_steps, settings=settings,
                           size=size, embeddings=embeddings, cache_token=cache_token,
                           is_negative=True)
            for prompt in prompts
        ]

    def scheduled(self, prompt: str, *, steps: int, hires_steps: int | None,
                  settings: ConditioningSettings, size: SizeConditioning | None,
                  embeddings: EmbeddingTable | None, cache_token: Hashable,
                  is_negative: bool) -> ScheduledCond:
        """One prompt's `ScheduledCond`, from the cache when it was encoded before."""
        size = (size or SizeConditioning()) if self.family.is_sdxl else None
        key = (is_negative, prompt, steps, hires_steps, settings, size, embeddings, cache_token)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        resolve = step_resolver(steps, hires_steps, settings.use_old_scheduling)
        entries = schedule_prompt(prompt, resolve)
        conds = self.encode_texts([text for _, text in entries], is_negative=is_negative,
                                  settings=settings, size=size, embeddings=embeddings)
        result = ScheduledCond(tuple((step, cond) for (step, _), cond in zip(entries, conds)))
        with self._lock:
            self._cache[key] = result
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return result

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    # ---- encoding ---------------------------------------------------------------------

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], *, is_negative: bool = False,
                     settings: ConditioningSettings = DEFAULT_SETTINGS,
                     size: SizeConditioning | None = None,
                     embeddings: EmbeddingTable | None = None) -> list[Cond]:
        """Encode texts (already free of schedules) as one batch: one `Cond` each."""
        if not texts:
            return []
        outputs = [self.encode_with(spec, encoder, texts, settings, embeddings)
                   for spec, encoder in zip(self.family.text_encoders, self.encoders)]
        if len({out.hidden.shape[1] for out in outputs}) != 1:
            raise ValueError("text encoders produced different chunk counts "
                             "(an embedding lacks vectors for one of them?)")
        context = torch.cat([out.hidden for out in outputs], dim=-1)
        if not self.family.is_sdxl:
            return [Cond(context[i]) for i in range(len(texts))]
        pooled = next(out.pooled for out in outputs if out.pooled is not None)
        # SDXL: an all-empty negative prompt means zero text embeddings.
        if is_negative and all(text == "" for text in texts):
            context, pooled = torch.zeros_like(context), torch.zeros_like(pooled)
        vector = sdxl_vector(pooled, size or SizeConditioning(),
                             refiner=self.family.adm == "sdxl_refiner", is_negative=is_negative)
        return [Cond(context[i], vector[i]) for i in range(len(texts))]

    def encode_with(self, spec: TextEncoderSpec, encoder: TextEncoder, texts: Sequence[str],
                    settings: ConditioningSettings,
                    embeddings: EmbeddingTable | None) -> EncodedBatch:
        chunked = chunk_texts(texts, tokenizer=self.tokenizer, emphasis=settings.emphasis,
                              comma_backtrack=settings.comma_padding_backtrack,
                              embeddings=embeddings, encoder_name=spec.name)
        ids = SpecialIds(self.tokenizer.bos_id, self.tokenizer.eos_id, self.tokenizer.comma_id)
        return encode_chunks(encoder, [chunks for chunks, _ in chunked], ids=ids,
                             emphasis=settings.emphasis,
                             clip_skip=self.clip_skip_for(spec, settings))

    def clip_skip_for(self, spec: TextEncoderSpec, settings: ConditioningSettings) -> int | None:
        """The clip skip one encoder gets (None: its configured layer)."""
        if settings.clip_skip < 1:
            raise ValueError(f"clip_skip must be at least 1, got {settings.clip_skip}")
        if spec.name != "clip_l":
            return None
        if self.family.is_sdxl:
            return settings.clip_skip if settings.sdxl_clip_l_skip else None
        return settings.clip_skip if settings.clip_skip > 1 else None

    # ---- UI token counter -------------------------------------------------------------

    def token_count(self, prompt: str, *, steps: int = 20, is_positive: bool = True,
                    settings: ConditioningSettings = DEFAULT_SETTINGS,
                    embeddings: EmbeddingTable | None = None) -> tuple[int, int]:
        """(tokens, capacity) as A1111's counter shows "tokens/capacity" (e.g. 3/75).

        The count is that of the longest text any schedule step or `AND` part produces;
        capacity is the next multiple of 75.
        """
        text = strip_comments(prompt) if settings.enable_prompt_comments else prompt
        text, _ = extract_extra_networks(text)
        parts = [part for part, _ in split_and_weights(text)] if is_positive else [text]
        schedules = get_learned_conditioning_prompt_schedules(list(dict.fromkeys(parts)), steps)
        texts = [scheduled for schedule in schedules for _, scheduled in schedule]
        chunked = chunk_texts(texts, tokenizer=self.tokenizer, emphasis=settings.emphasis,
                              comma_backtrack=settings.comma_padding_backtrack,
                              embeddings=embeddings, encoder_name=self.family.text_encoders[0].name)
        count = max(tokens for _, tokens in chunked)
        return count, math.ceil(max(count, 1) / CHUNK_LENGTH) * CHUNK_LENGTH
