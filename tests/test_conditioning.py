"""Conditioning on tiny random text encoders with the real tokenizer.

References are computed independently: ids by hand from the tokenizer's known ids,
hidden states through transformers' own CLIP forward (`output_hidden_states`), and the
emphasis weighting by the formula of docs/a1111-semantics.md, "Chunks and weighting".
"""

import pytest
import torch

from modules.conditioning import (
    Conditioner,
    ConditioningSettings,
    EmbeddingTable,
    SizeConditioning,
    TextualInversion,
)
from modules.conditioning.chunking import SpecialIds, build_chunks
from modules.conditioning.encode import chunk_ids, chunk_texts, emphasis_infotext
from modules.conditioning.tokenizer import ClipTokenizer
from modules.nn.text_encoders import TextEncoder
from modules.nn.timestep import timestep_embedding
from tests.tiny import TINY_SD2, TINY_SD15, TINY_SDXL, TINY_SDXL_REFINER

BOS, EOS, COMMA, A, B, C = 49406, 49407, 267, 320, 321, 322


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


def random_encoders(family, seed=0):
    encoders = []
    for index, spec in enumerate(family.text_encoders):
        torch.manual_seed(seed + index)
        encoder = TextEncoder(config=spec.config).eval()
        with torch.no_grad():
            for param in encoder.parameters():
                param.add_(torch.randn_like(param) * 0.1)
        encoders.append(encoder)
    return encoders


@pytest.fixture(scope="module")
def sd15(tokenizer):
    return Conditioner(encoders=random_encoders(TINY_SD15), tokenizer=tokenizer, family=TINY_SD15)


@pytest.fixture(scope="module")
def sdxl(tokenizer):
    return Conditioner(encoders=random_encoders(TINY_SDXL), tokenizer=tokenizer, family=TINY_SDXL)


def chunks_of(tokenizer, text, backtrack=20):
    return chunk_texts([text], tokenizer=tokenizer, emphasis="Original", comma_backtrack=backtrack,
                       embeddings=None, encoder_name="clip_l")[0]


def padded(*tokens):
    return (BOS, *tokens) + (EOS,) * (77 - 1 - len(tokens))


def test_chunk_ids_and_padding(tokenizer):
    chunks, count = chunks_of(tokenizer, "a photo of an astronaut riding a horse")
    body = (320, 1125, 539, 550, 18376, 6765, 320, 4558)
    assert [c.tokens for c in chunks] == [padded(*body)] and count == 8
    assert chunks[0].multipliers == (1.0,) * 77
    # OpenCLIP encoders see id 0 after the first EOS.
    ids = chunk_ids(chunks, pad_with_eos=False, eos_id=EOS)
    assert ids[0].tolist() == [BOS, *body, EOS] + [0] * 67
    chunks, count = chunks_of(tokenizer, "")
    assert [c.tokens for c in chunks] == [padded()] and count == 0
    chunks, count = chunks_of(tokenizer, "a " * 80)
    assert [c.tokens for c in chunks] == [padded(*[A] * 75), padded(*[A] * 5)] and count == 80


def test_break_closes_the_chunk(tokenizer):
    chunks, count = chunks_of(tokenizer, "a BREAK b")
    assert [c.tokens for c in chunks] == [padded(A), padded(B)] and count == 76
    chunks, count = chunks_of(tokenizer, "a BREAK")
    assert [c.tokens for c in chunks] == [padded(A)] and count == 75
    chunks, _ = chunks_of(tokenizer, "BREAK a")
    assert [c.tokens for c in chunks] == [padded(), padded(A)]


def test_comma_backtrack(tokenizer):
    # 70 "a", a comma at index 70, then 10 "b": when the chunk is full (4 "b" in it) the
    # comma is 75 - 70 = 5 <= 20 tokens back, so the 4 "b" move to the next chunk.
    text = "a " * 70 + ", " + "b " * 10
    chunks, count = chunks_of(tokenizer, text)
    assert [c.tokens for c in chunks] == [padded(*[A] * 70, COMMA), padded(*[B] * 10)]
    assert count == 85
    # Backtrack 0 (off) or 4 (< 5) keeps the chunk full.
    for backtrack in (0, 4):
        chunks, count = chunks_of(tokenizer, text, backtrack)
        assert [c.tokens for c in chunks] == [padded(*[A] * 70, COMMA, *[B] * 4), padded(*[B] * 6)]
        assert count == 81


def reference_hidden(encoder, ids, skip=None, norm=None):
    with torch.no_grad():
        out = encoder.transformer(input_ids=ids, output_hidden_states=True)
    if skip is None:
        return out.last_hidden_state
    hidden = out.hidden_states[-skip]
    return encoder.transformer.final_layer_norm(hidden) if norm else hidden


def test_weighting_math_and_emphasis_modes(sd15, tokenizer):
    encoder = sd15.encoders[0]
    texts = ["(a b:3) c", "[d]"]
    ids = torch.tensor([padded(A, B, C), padded(*tokenizer.encode("d"))])
    multipliers = torch.ones(2, 77)
    multipliers[0, 1:3], multipliers[1, 1] = 3.0, 1 / 1.1
    z = reference_hidden(encoder, ids)
    weighted = z * multipliers[..., None]
    expected = {
        "Original": weighted * (z.mean() / weighted.mean()),  # mean over the whole batch
        "No norm": weighted,
        "Ignore": z,
    }
    assert (expected["Original"] - expected["No norm"]).abs().max() > 1e-3
    for mode, want in expected.items():
        conds = sd15.encode_texts(texts, settings=ConditioningSettings(emphasis=mode))
        got = torch.stack([cond.crossattn for cond in conds])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # "None": brackets are not parsed, so they are tokens of their own.
    literal = torch.tensor([padded(*tokenizer.encode("(a b:3) c"))])
    cond = sd15.encode_texts(texts[:1], settings=ConditioningSettings(emphasis="None"))[0]
    torch.testing.assert_close(cond.crossattn, reference_hidden(encoder, literal)[0], rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(ValueError, match="emphasis"):
        sd15.encode_texts(["x"], settings=ConditioningSettings(emphasis="Loud"))
    assert emphasis_infotext(texts, "No norm") == "No norm"
    assert emphasis_infotext(texts, "Original") is None
    assert emphasis_infotext(["plain"], "Ignore") is None


def test_long_prompt_concatenates_chunks(sd15):
    cond = sd15.encode_texts(["a " * 80])[0]
    ids = torch.tensor([padded(*[A] * 75), padded(*[A] * 5)])
    want = reference_hidden(sd15.encoders[0], ids)
    assert cond.crossattn.shape == (154, 32)
    torch.testing.assert_close(cond.crossattn, torch.cat([want[0], want[1]]), rtol=1e-5, atol=1e-5)


def test_clip_skip_sd1(sd15):
    ids = torch.tensor([padded(A, B)])
    cond = sd15.encode_texts(["a b"], settings=ConditioningSettings(clip_skip=2))[0]
    want = reference_hidden(sd15.encoders[0], ids, skip=2, norm=True)[0]
    torch.testing.assert_close(cond.crossattn, want, rtol=1e-5, atol=1e-5)
    plain = sd15.encode_texts(["a b"])[0]
    assert (plain.crossattn - cond.crossattn).abs().max() > 1e-2


def test_sdxl_context_and_vector_layout(sdxl):
    clip_l, clip_g = sdxl.encoders
    size = SizeConditioning(width=96, height=64, crop_top=8, crop_left=4)
    cond = sdxl.encode_texts(["a b"], size=size)[0]
    l_ids = torch.tensor([padded(A, B)])
    g_ids = torch.tensor([[BOS, A, B, EOS] + [0] * 73])
    want_l = reference_hidden(clip_l, l_ids, skip=2)[0]
    want_g = reference_hidden(clip_g, g_ids, skip=2)[0]
    torch.testing.assert_close(cond.crossattn, torch.cat([want_l, want_g], dim=-1), rtol=1e-5,
                               atol=1e-5)
    with torch.no_grad():
        pooled = clip_g.transformer(input_ids=g_ids).text_embeds[0]
    sizes = [timestep_embedding(torch.tensor([float(v)]), 256)[0] for v in (64, 96, 8, 4, 64, 96)]
    want_vector = torch.cat([pooled, *sizes])
    assert cond.vector.shape == (TINY_SDXL.unet.adm_in_channels,)
    torch.testing.assert_close(cond.vector, want_vector, rtol=1e-5, atol=1e-5)
    # sdxl_clip_l_skip: CLIP-L takes hidden_states[-N] (no norm), bigG is unchanged.
    skipped = sdxl.encode_texts(["a b"], size=size, settings=ConditioningSettings(
        clip_skip=1, sdxl_clip_l_skip=True))[0]
    torch.testing.assert_close(skipped.crossattn[:, :32],
                               reference_hidden(clip_l, l_ids, skip=1)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skipped.crossattn[:, 32:], want_g, rtol=1e-5, atol=1e-5)
    ignored = sdxl.encode_texts(["a b"], size=size, settings=ConditioningSettings(clip_skip=3))[0]
    torch.testing.assert_close(ignored.crossattn, cond.crossattn)


def test_sdxl_empty_negative_is_zero_and_refiner_scores(sdxl, tokenizer):
    negative = sdxl.encode_negative_batch([""], steps=5)[0].entries[0][1]
    assert negative.crossattn.abs().max() == 0 and negative.vector[:48].abs().max() == 0
    assert negative.vector[48:].abs().max() > 0.5
    positive = sdxl.encode_batch([""], steps=5)[0].parts[0][0].entries[0][1]
    assert positive.crossattn.abs().max() > 0
    refiner = Conditioner(encoders=random_encoders(TINY_SDXL_REFINER), tokenizer=tokenizer,
                          family=TINY_SDXL_REFINER)
    size = SizeConditioning(width=64, height=64)
    pos = refiner.encode_texts(["a"], size=size)[0].vector
    neg = refiner.encode_texts(["a"], size=size, is_negative=True)[0].vector
    assert pos.shape == (48 + 5 * 256,) and TINY_SDXL_REFINER.unet.adm_in_channels == 48 + 5 * 256
    torch.testing.assert_close(pos[-256:], timestep_embedding(torch.tensor([6.0]), 256)[0])
    torch.testing.assert_close(neg[-256:], timestep_embedding(torch.tensor([2.5]), 256)[0])
    torch.testing.assert_close(pos[:-256], neg[:-256])


def test_schedules_and_and_weights(sd15):
    multi = sd15.encode_batch(["a [b:c:2] AND a dog:0.5"], steps=4)[0]
    (first, w1), (second, w2) = multi.parts
    assert (w1, w2) == (1.0, 0.5)
    assert [step for step, _ in first.entries] == [2, 4]
    texts = sd15.encode_texts(["a b", "a c", " a dog"])
    torch.testing.assert_close(first.at(1).crossattn, texts[0].crossattn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(first.at(3).crossattn, texts[1].crossattn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second.at(1).crossattn, texts[2].crossattn, rtol=1e-5, atol=1e-5)
    # Hires pass: [b:c:2] with base 4 -> 2 - 4 < 1, so "c" from the start of 6 steps.
    hires = sd15.encode_batch(["a [b:c:2]"], steps=4, hires_steps=6)[0].parts[0][0]
    assert [step for step, _ in hires.entries] == [6]
    # Negative prompts are not split on AND.
    negative = sd15.encode_negative_batch(["a AND b"], steps=4)[0]
    torch.testing.assert_close(negative.at(1).crossattn,
                               sd15.encode_texts(["a AND b"])[0].crossattn)


def test_cache_is_keyed_on_prompt_steps_and_settings(sd15):
    first = sd15.encode_negative_batch(["cached prompt"], steps=10)[0]
    assert sd15.encode_negative_batch(["cached prompt"], steps=10)[0] is first
    assert sd15.encode_negative_batch(["cached prompt"], steps=11)[0] is not first
    other = sd15.encode_negative_batch(["cached prompt"], steps=10,
                                       settings=ConditioningSettings(clip_skip=2))[0]
    assert other is not first


def test_textual_inversion_vectors_are_spliced_and_never_split(sd15, tokenizer):
    vectors = torch.randn(3, 32)
    table = EmbeddingTable.from_vectors(tokenizer.encode, {"mytoken": {"clip_l": vectors}})
    cond = sd15.encode_texts(["a mytoken b"], embeddings=table)[0]
    ids = torch.tensor([padded(A, 0, 0, 0, B)])
    encoder = sd15.encoders[0]
    embeds = encoder.token_embedding(ids).detach().clone()
    embeds[0, 2:5] = vectors
    with torch.no_grad():
        want = encoder(ids, inputs_embeds=embeds).hidden[0]
    torch.testing.assert_close(cond.crossattn, want, rtol=1e-5, atol=1e-5)
    # 74 tokens then a 3-vector embedding: it moves whole into the next chunk.
    segments = [["a " * 74 + "mytoken", 1.0]]
    chunks, count = build_chunks(segments, [tokenizer.encode(segments[0][0])], embeddings=table,
                                 encoder_name="clip_l", ids=SpecialIds())
    assert chunks[0].tokens == padded(*[A] * 74) and chunks[1].tokens == padded(0, 0, 0)
    assert [fix.position for fix in chunks[1].fixes] == [1] and count == 78
    # An embedding without vectors for this encoder is plain text.
    other = EmbeddingTable([TextualInversion("x", (A,), {"clip_g": vectors})])
    chunks, _ = build_chunks([["a", 1.0]], [[A]], embeddings=other, encoder_name="clip_l")
    assert chunks[0].tokens == padded(A) and not chunks[0].fixes


def test_token_count(sd15):
    assert sd15.token_count("a, b BREAK c") == (76, 150)
    assert sd15.token_count("") == (0, 75)
    assert sd15.token_count("a <lora:x:1> # comment\n") == (1, 75)
    # The longest text of any schedule step or AND part counts.
    assert sd15.token_count("[a b c:d:2] AND e f") == (3, 75)
    assert sd15.token_count("a " * 76) == (76, 150)


def test_sd2_uses_open_clip_padding(tokenizer):
    conditioner = Conditioner(encoders=random_encoders(TINY_SD2), tokenizer=tokenizer,
                              family=TINY_SD2)
    cond = conditioner.encode_texts(["a b"])[0]
    encoder = conditioner.encoders[0]
    ids = torch.tensor([[BOS, A, B, EOS] + [0] * 73])
    want = reference_hidden(encoder, ids, skip=2, norm=True)[0]
    torch.testing.assert_close(cond.crossattn, want, rtol=1e-5, atol=1e-5)
    # SD2 ignores clip skip, as A1111 does.
    skipped = conditioner.encode_texts(["a b"], settings=ConditioningSettings(clip_skip=2))[0]
    torch.testing.assert_close(skipped.crossattn, cond.crossattn)
