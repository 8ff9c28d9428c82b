"""The T5 v1.1 text encoder ("T5-XXL") of SD3, SD3.5 and Flux.1, run through transformers.

Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer" (https://arxiv.org/abs/1910.10683); v1.1 uses a gated-GELU feed-forward and
no tied output head. Only the encoder stack is used: prompt token ids -> (B, L, d_model)
hidden states, the long text context of the MMDiT and of Flux.

The network is transformers' `T5EncoderModel`, whose parameter names are those of the
files users keep (`t5xxl_fp16.safetensors`: `shared.weight`, `encoder.block.N...`), so
weights load by name (all-in-one files add `text_encoders.t5xxl.transformer.`, which the
loader strips). The token embedding is stored as `shared.weight`,
`encoder.embed_tokens.weight` or both (the two are one tensor); `load_weights` fills
both from whichever is present and keeps them one tensor.

In float16 the feed-forward output projections `wo` stay float32 (as transformers keeps
them): T5 v1.1's activations overflow float16 there otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

SHARED = "shared.weight"
EMBED_TOKENS = "encoder.embed_tokens.weight"


@dataclass(frozen=True, kw_only=True)
class T5Config:
    """The numbers that decide a T5 encoder's shapes (defaults: T5 v1.1 XXL).

    `hidden_size` is T5's `d_model`; `head_dim` its `d_kv` (heads x head_dim may differ
    from `hidden_size` in general, not in XXL). `max_tokens` is how many prompt tokens a
    family feeds it (SD3: 256 in diffusers; Flux dev 512, schnell 256).
    """

    vocab_size: int = 32128
    hidden_size: int = 4096
    num_layers: int = 24
    num_heads: int = 64
    head_dim: int = 64
    intermediate_size: int = 10240
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    max_tokens: int = 256

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> "T5Config":
        """The config of a `T5EncoderModel` state dict's shapes."""
        embedding = shapes.get(SHARED) or shapes[EMBED_TOKENS]
        attention = "encoder.block.0.layer.0.SelfAttention."
        buckets, heads = shapes[attention + "relative_attention_bias.weight"]
        blocks = {key.split(".")[2] for key in shapes if key.startswith("encoder.block.")}
        return cls(
            vocab_size=embedding[0],
            hidden_size=embedding[1],
            num_layers=len(blocks),
            num_heads=heads,
            head_dim=shapes[attention + "q.weight"][0] // heads,
            intermediate_size=shapes["encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0],
            relative_attention_num_buckets=buckets,
        )


T5_XXL = T5Config()


def hf_t5_config(config: T5Config):
    """transformers' `T5Config` for an encoder-only T5 v1.1 with our numbers."""
    from transformers import T5Config as HFT5Config

    return HFT5Config(
        vocab_size=config.vocab_size, d_model=config.hidden_size, d_kv=config.head_dim,
        d_ff=config.intermediate_size, num_layers=config.num_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        tie_word_embeddings=False, dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
    )


class T5TextEncoder(nn.Module):
    """Token ids (B, L) -> T5 encoder hidden states (B, L, hidden_size)."""

    def __init__(self, *, config: T5Config, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from transformers import T5EncoderModel

        self.config = config
        # Built on the ambient default device: `with torch.device("meta")` costs nothing.
        self.transformer = T5EncoderModel(hf_t5_config(config))
        self.transformer.eval()
        if dtype is not None:
            self.set_dtype(dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.shared.weight.dtype

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Cast the weights; float16 keeps the `wo` projections in float32."""
        self.transformer.to(dtype)
        self._keep_wo_float32()

    def _keep_wo_float32(self) -> None:
        if self.dtype != torch.float16:
            return
        # Cast the weight's data in place of the parameter, so meta weights stay meta.
        for block in self.transformer.encoder.block:
            block.layer[-1].DenseReluDense.wo.float()

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], *,
                     assign: bool = True) -> list[str]:
        """Load a file's tensors by name; returns the parameters left without weights.

        Keys the encoder does not have are ignored; the token embedding may come under
        either name or both, and stays one tensor for both names.
        """
        tensors = dict(state_dict)
        embedding = tensors.get(SHARED, tensors.get(EMBED_TOKENS))
        if embedding is not None:
            tensors[SHARED] = embedding
        tensors.pop(EMBED_TOKENS, None)
        expected = self.transformer.state_dict()
        result = self.transformer.load_state_dict(
            {k: v for k, v in tensors.items() if k in expected}, strict=False, assign=assign)
        # An assign-load replaces `shared.weight`: tie the encoder's embedding to it again.
        self.transformer.encoder.embed_tokens.weight = self.transformer.shared.weight
        self._keep_wo_float32()
        return [key for key in result.missing_keys if key != EMBED_TOKENS]

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states; SD3 / Flux give no mask (padding tokens are attended to)."""
        output = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return output.last_hidden_state
