"""The T5 v1.1 XXL encoder: full-size layout, tied-embedding loading, tokens.

- Built on the meta device from `T5_XXL`, `T5TextEncoder.transformer` has exactly the tensors
  of `t5xxl_fp16.safetensors` (`tests/fixtures/t5xxl_encoder.tsv`, 220 tensors including
  both names of the tied embedding): 4,893,906,944 values over the file's 220 tensors (the
  fixture README's figure, which counts the 32128 x 4096 embedding twice), 4,762,310,656
  parameters in the model (the embedding counted once).
- A tiny T5 loads from a state dict holding only `encoder.embed_tokens.weight`, only
  `shared.weight`, or both, and gives bitwise the same output as transformers'
  `T5EncoderModel` holding the original weights (same code path: tolerance 0).
- Tokens are padded / truncated to a fixed length with EOS kept, as diffusers' SD3 / Flux
  pipelines tokenize (`padding="max_length"`, `truncation=True`).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from modules.conditioning.t5_tokenizer import load_t5_tokenizer, t5_prompt_embeds, tokenize_t5
from modules.nn.t5_encoder import (
    EMBED_TOKENS,
    SHARED,
    T5_XXL,
    T5Config,
    T5TextEncoder,
    hf_t5_config,
)
from tests.helpers.layouts import assert_same_layout, fixture_shapes

T5_XXL_FILE_VALUES = 4_893_906_944  # all 220 tensors of the file, embedding twice
T5_XXL_PARAMETERS = 4_762_310_656  # the tied embedding once
TINY_T5 = T5Config(vocab_size=64, hidden_size=16, num_layers=2, num_heads=4, head_dim=4,
                   intermediate_size=24, relative_attention_num_buckets=8,
                   relative_attention_max_distance=16)


def test_full_size_t5_xxl_matches_the_file() -> None:
    expected = fixture_shapes("t5xxl_encoder.tsv", "")
    assert len(expected) == 220 and SHARED in expected and EMBED_TOKENS in expected
    with torch.device("meta"):
        encoder = T5TextEncoder(config=T5_XXL)
    assert_same_layout(encoder.transformer, expected)
    assert sum(p.numel() for p in encoder.parameters()) == T5_XXL_PARAMETERS
    assert sum(t.numel() for t in encoder.transformer.state_dict().values()) == \
        T5_XXL_FILE_VALUES
    hf = hf_t5_config(T5_XXL)
    assert (hf.d_model, hf.num_layers, hf.num_heads, hf.d_kv, hf.d_ff) == (4096, 24, 64, 64, 10240)
    assert hf.is_gated_act and hf.dense_act_fn == "gelu_new" and hf.vocab_size == 32128
    assert (hf.relative_attention_num_buckets, hf.relative_attention_max_distance) == (32, 128)


@pytest.fixture(scope="module")
def reference():
    from transformers import T5EncoderModel

    torch.manual_seed(0)
    model = T5EncoderModel(hf_t5_config(TINY_T5)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


IDS = torch.tensor([[5, 9, 17, 1, 0, 0], [33, 2, 8, 40, 61, 1]])


@pytest.mark.parametrize("names", [(EMBED_TOKENS,), (SHARED,), (SHARED, EMBED_TOKENS)],
                         ids=["embed_tokens_only", "shared_only", "both"])
@pytest.mark.parametrize("assign", [False, True], ids=["copy", "assign"])
def test_tied_embedding_loads_from_either_name(reference, names, assign) -> None:
    state = {k: v.clone() for k, v in reference.state_dict().items()
             if k not in (SHARED, EMBED_TOKENS)}
    for name in names:
        state[name] = reference.shared.weight.detach().clone()
    ours = T5TextEncoder(config=TINY_T5)
    assert ours.load_weights(state, assign=assign) == []
    transformer = ours.transformer
    assert transformer.encoder.embed_tokens.weight is transformer.shared.weight
    with torch.no_grad():
        expected = reference(input_ids=IDS).last_hidden_state
        actual = ours(IDS)
    assert actual.shape == (2, 6, 16)
    assert torch.equal(actual, expected)


def test_missing_weights_are_reported_unknown_ignored(reference) -> None:
    state = dict(reference.state_dict())
    without_embedding = {k: v for k, v in state.items() if k not in (SHARED, EMBED_TOKENS)}
    assert T5TextEncoder(config=TINY_T5).load_weights(without_embedding) == [SHARED]
    extra = {**state, "decoder.block.0.weight": torch.zeros(1)}
    assert T5TextEncoder(config=TINY_T5).load_weights(extra) == []
    partial = {k: v for k, v in state.items() if ".block.1." not in k}
    missing = T5TextEncoder(config=TINY_T5).load_weights(partial)
    assert missing and all(".block.1." in key for key in missing)


def test_float16_keeps_wo_in_float32() -> None:
    encoder = T5TextEncoder(config=TINY_T5, dtype=torch.float16)
    assert encoder.dtype == torch.float16
    assert encoder.transformer.encoder.block[0].layer[-1].DenseReluDense.wo.weight.dtype == \
        torch.float32
    assert encoder.transformer.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == \
        torch.float16


def test_float16_file_loads_with_wo_in_float32(reference) -> None:
    """The loader reads tensors already cast to float16; `wo` goes back to float32."""
    half = {k: v.half() for k, v in reference.state_dict().items()}
    with torch.device("meta"):
        encoder = T5TextEncoder(config=TINY_T5)
    assert encoder.load_weights(half) == []
    wo = encoder.transformer.encoder.block[1].layer[-1].DenseReluDense.wo.weight
    assert wo.dtype == torch.float32 and encoder.dtype == torch.float16
    with torch.no_grad():
        out = encoder(IDS)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()


def test_tokens_padded_and_truncated_like_the_pipelines() -> None:
    tokenizer = load_t5_tokenizer()
    tokens = tokenize_t5(tokenizer, ["a photo of a cat", ""], 10)
    assert tokens.ids.tolist() == [[3, 9, 1202, 13, 3, 9, 1712, 1, 0, 0],
                                   [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]]
    assert tokens.mask.tolist() == [[1] * 8 + [0] * 2, [1] + [0] * 9]
    short = tokenize_t5(tokenizer, ["a photo of a cat"], 5)
    assert short.ids.tolist() == [[3, 9, 1202, 13, 1]]  # truncated, EOS kept last
    encoder = T5TextEncoder(config=replace(TINY_T5, vocab_size=32128))
    embeds = t5_prompt_embeds(encoder, tokenizer, ["a photo of a cat"], 12)
    assert embeds.shape == (1, 12, 16)
    masked = t5_prompt_embeds(encoder, tokenizer, ["a photo of a cat"], 12, use_mask=True)
    assert not torch.equal(embeds[:, :8], masked[:, :8])  # the mask changes attention
