"""The T5 v1.1 XXL text encoder of SD3 / SD3.5 and Flux.1.

T5 (Raffel et al., 2020, "Exploring the Limits of Transfer Learning with a Unified
Text-to-Text Transformer", https://arxiv.org/abs/1910.10683) in its v1.1 form: pre-norm
RMS layer norms without bias, relative position buckets (shared by all layers, stored in
block 0), gated-GELU feed-forward (`wi_0`, `wi_1`, `wo`), no tied output head. SD3
(Esser et al., 2024, sec. 5.2) and Flux.1 use only the encoder, and only its final hidden
state (after `final_layer_norm`), 4096 wide, one vector per token.

The network is transformers' `T5EncoderModel`, built from `T5Config` here without any
hub access; its names are the files' names (`t5xxl_fp16.safetensors`: `shared.weight`,
`encoder.block.N.layer.M...`; all-in-one files add `text_encoders.t5xxl.transformer.`,
which matches `T5Encoder.transformer` once `text_encoders.t5xxl.` is stripped). The token
embedding is one tensor under two names, `shared.weight` and
`encoder.embed_tokens.weight`; files carry either or both, and either fills it.

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
    """The shape-deciding numbers of a T5 v1.1 encoder."""

    vocab_size: int = 32128
    d_model: int = 4096
    num_layers: int = 24
    num_heads: int = 64
    d_kv: int = 64
    d_ff: int = 10240
    feed_forward_proj: str = "gated-gelu"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6


T5_XXL = T5Config()


def hf_t5_config(config: T5Config):
    """transformers' `T5Config` for an encoder-only model (no hub, no files)."""
    from transformers import T5Config as HFT5Config

    return HFT5Config(
        vocab_size=config.vocab_size,
        d_model=config.d_model,
        d_kv=config.d_kv,
        d_ff=config.d_ff,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance,
        feed_forward_proj=config.feed_forward_proj,
        layer_norm_epsilon=config.layer_norm_epsilon,
        dropout_rate=0.0,
        is_encoder_decoder=False,
        use_cache=False,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
    )


class T5LoadError(ValueError):
    """A T5 state dict that does not fit the configured encoder."""


def with_both_embedding_names(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict with the tied token embedding under both of its names."""
    tensors = dict(state_dict)
    embedding = tensors.get(SHARED, tensors.get(EMBED_TOKENS))
    if embedding is None:
        raise T5LoadError(f"T5 weights without a token embedding ({SHARED} or {EMBED_TOKENS})")
    tensors[SHARED] = tensors[EMBED_TOKENS] = embedding
    return tensors


class T5Encoder(nn.Module):
    """T5 encoder: token ids (B, T) -> final hidden states (B, T, d_model)."""

    def __init__(self, *, config: T5Config = T5_XXL, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from transformers import T5EncoderModel

        self.config = config
        # Build on the target (or ambient, e.g. meta) device, without the hub.
        with torch.device(device or torch.get_default_device()):
            self.transformer = T5EncoderModel(hf_t5_config(config))
        self.transformer.eval()
        if dtype is not None:
            self.set_dtype(dtype)

    def set_dtype(self, dtype: torch.dtype) -> None:
        """Cast the weights; float16 keeps the `wo` projections in float32."""
        self.transformer.to(dtype)
        if dtype == torch.float16:
            for block in self.transformer.encoder.block:
                block.layer[-1].DenseReluDense.wo.float()

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.shared.weight.dtype

    def load_checkpoint_weights(self, state_dict: Mapping[str, torch.Tensor], *,
                                assign: bool = False) -> None:
        """Load `T5EncoderModel` names, the token embedding under either name or both.

        Raises `T5LoadError` naming unknown keys or parameters left unfilled.
        """
        tensors = with_both_embedding_names(state_dict)
        expected = set(self.transformer.state_dict())
        unknown = sorted(set(tensors) - expected)
        missing = sorted(expected - set(tensors))
        if unknown or missing:
            raise T5LoadError(f"T5 weights do not fit: unknown keys {unknown[:8]}, "
                              f"missing parameters {missing[:8]}")
        tensors.pop(EMBED_TOKENS)
        self.transformer.load_state_dict(tensors, strict=False, assign=assign)
        # An assign-load replaces `shared.weight`: tie the encoder's embedding to it again.
        self.transformer.encoder.embed_tokens.weight = self.transformer.shared.weight

    def forward(self, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Final hidden states; SD3 / Flux give no mask (padding tokens are attended to)."""
        output = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        return output.last_hidden_state
