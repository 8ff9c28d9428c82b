"""SD3.x and Flux.1 conditioning against diffusers' pipelines' `encode_prompt` (test oracle).

The tiny families of `tests/flow_tiny.py` (random CLIP-L, CLIP-G and T5 encoders) are
handed to `StableDiffusion3Pipeline` / `FluxPipeline` as their text encoders (the same
transformers modules; SD3's CLIP-L gets diffusers' `CLIPTextModelWithProjection` with an
identity projection, so its pooled output is the unprojected one that Stability's
reference code and our config use). The CLIP tokenizers are transformers' `CLIPTokenizer`
over our shipped vocabulary (SD3's second pads with "!", id 0, as OpenCLIP), the T5 one
is our shipped `T5TokenizerFast`. Prompts without emphasis and under 75 tokens must give
the same context and pooled vectors: tolerance 1e-6 absolute (same float32 modules).
"""

from __future__ import annotations

import json

import pytest
import torch

from modules.conditioning.conditioner import ConditioningSettings
from modules.conditioning.flow_conditioner import FlowConditioner
from modules.conditioning.t5_prompts import t5_weighted_tokens
from modules.conditioning.t5_tokenizer import load_t5_tokenizer
from modules.conditioning.tokenizer import ClipTokenizer
from tests.flow_tiny import TINY_FLUX_DEV, TINY_SD35, random_encoders

TOLERANCE = 1e-6
PROMPTS = ["a photo of an astronaut riding a horse", "a red cube, studio light"]
NEGATIVES = ["", "blurry"]


@pytest.fixture(scope="module")
def clip_tokenizer():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def t5_tokenizer():
    return load_t5_tokenizer()


@pytest.fixture(scope="module")
def sd3(clip_tokenizer, t5_tokenizer):
    return FlowConditioner(encoders=random_encoders(TINY_SD35), tokenizer=clip_tokenizer,
                           family=TINY_SD35, t5_tokenizer=t5_tokenizer)


@pytest.fixture(scope="module")
def flux(clip_tokenizer, t5_tokenizer):
    return FlowConditioner(encoders=random_encoders(TINY_FLUX_DEV, seed=7),
                           tokenizer=clip_tokenizer, family=TINY_FLUX_DEV,
                           t5_tokenizer=t5_tokenizer)


def hf_clip_tokenizer(clip_tokenizer, **kwargs):
    """A new transformers `CLIPTokenizer` over the shipped vocabulary, with `kwargs`."""
    from transformers import CLIPTokenizer

    directory = clip_tokenizer.directory
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split(" ")) for line in lines if line and not line.startswith("#")]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, **kwargs)


def projected_clip_l(encoder):
    """diffusers' SD3 CLIP-L class with our weights and an identity text projection."""
    from transformers import CLIPTextModelWithProjection

    model = CLIPTextModelWithProjection(encoder.transformer.config).eval()
    model.text_model.load_state_dict(encoder.text_model.state_dict(), strict=True)
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(model.text_projection.weight.shape[0]))
    return model


def sd3_oracle(conditioner, clip_tokenizer, t5_tokenizer):
    from diffusers import StableDiffusion3Pipeline

    clip_l, clip_g, t5 = conditioner.encoders
    return StableDiffusion3Pipeline(
        transformer=None, scheduler=None, vae=None,
        text_encoder=projected_clip_l(clip_l), tokenizer=hf_clip_tokenizer(clip_tokenizer),
        text_encoder_2=clip_g.transformer,
        tokenizer_2=hf_clip_tokenizer(clip_tokenizer, pad_token="!"),
        text_encoder_3=t5.transformer, tokenizer_3=t5_tokenizer)


def flux_oracle(conditioner, clip_tokenizer, t5_tokenizer):
    from diffusers import FluxPipeline

    clip_l, t5 = conditioner.encoders
    return FluxPipeline(transformer=None, scheduler=None, vae=None,
                        text_encoder=clip_l.transformer,
                        tokenizer=hf_clip_tokenizer(clip_tokenizer),
                        text_encoder_2=t5.transformer, tokenizer_2=t5_tokenizer)


def stacked(conds):
    return (torch.stack([c.crossattn for c in conds]), torch.stack([c.vector for c in conds]))


def test_sd3_conds_equal_diffusers_encode_prompt(sd3, clip_tokenizer, t5_tokenizer):
    pipe = sd3_oracle(sd3, clip_tokenizer, t5_tokenizer)
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            PROMPTS, PROMPTS, PROMPTS, negative_prompt=NEGATIVES, negative_prompt_2=NEGATIVES,
            negative_prompt_3=NEGATIVES, do_classifier_free_guidance=True,
            max_sequence_length=256, device=torch.device("cpu"))
    context, vector = stacked(sd3.encode_texts(PROMPTS))
    assert context.shape == (2, 77 + 256, 64) and vector.shape == (2, 40)
    torch.testing.assert_close(context, embeds, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(vector, pooled, atol=TOLERANCE, rtol=0)
    context, vector = stacked(sd3.encode_texts(NEGATIVES, is_negative=True))
    torch.testing.assert_close(context, negative, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(vector, negative_pooled, atol=TOLERANCE, rtol=0)


def test_sd3_clip_skip_is_diffusers_clip_skip_minus_one(sd3, clip_tokenizer, t5_tokenizer):
    pipe = sd3_oracle(sd3, clip_tokenizer, t5_tokenizer)
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            PROMPTS[:1], PROMPTS[:1], PROMPTS[:1], do_classifier_free_guidance=False,
            clip_skip=1, device=torch.device("cpu"))
    settings = ConditioningSettings(clip_skip=2)
    context, vector = stacked(sd3.encode_texts(PROMPTS[:1], settings=settings))
    torch.testing.assert_close(context, embeds, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(vector, pooled, atol=TOLERANCE, rtol=0)


def test_flux_conds_equal_diffusers_encode_prompt(flux, clip_tokenizer, t5_tokenizer):
    pipe = flux_oracle(flux, clip_tokenizer, t5_tokenizer)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, PROMPTS, max_sequence_length=512,
                                                      device=torch.device("cpu"))
    context, vector = stacked(flux.encode_texts(PROMPTS))
    assert context.shape == (2, 512, 32) and vector.shape == (2, 16)
    assert text_ids.shape == (512, 3)
    torch.testing.assert_close(context, embeds, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(vector, pooled, atol=TOLERANCE, rtol=0)


def test_sd3_long_prompt_and_break_take_more_clip_chunks(sd3):
    context, _ = stacked(sd3.encode_texts(["a cat BREAK a dog"]))
    assert context.shape == (1, 2 * 77 + 256, 64)
    # CLIP fills 16 + 24 channels; the rest of the CLIP tokens is zero padding.
    assert context[:, :154, 40:].abs().max() == 0 and context[:, :154, :40].abs().max() > 0


def test_sd3_without_t5_has_zero_t5_tokens(sd3, clip_tokenizer):
    no_t5 = FlowConditioner(encoders=[*sd3.encoders[:2], None], tokenizer=clip_tokenizer,
                            family=TINY_SD35)
    with_t5 = sd3.encode_texts(PROMPTS[:1])[0]
    cond = no_t5.encode_texts(PROMPTS[:1])[0]
    assert cond.crossattn.shape == (77 + 256, 64)
    assert cond.crossattn[77:].abs().max() == 0
    torch.testing.assert_close(cond.crossattn[:77], with_t5.crossattn[:77])
    torch.testing.assert_close(cond.vector, with_t5.vector)


def test_flux_needs_t5(flux, clip_tokenizer):
    no_t5 = FlowConditioner(encoders=[flux.encoders[0], None], tokenizer=clip_tokenizer,
                            family=TINY_FLUX_DEV)
    with pytest.raises(ValueError, match="T5-XXL"):
        no_t5.encode_texts(["a cat"])


def test_t5_tokens_plain_prompt_equal_the_tokenizer_call(t5_tokenizer):
    texts = ["a photo of a cat", "word " * 600]
    tokens = t5_weighted_tokens(t5_tokenizer, texts, max_length=256)
    plain = t5_tokenizer(texts, padding="max_length", max_length=256, truncation=True,
                         return_tensors="pt")
    assert torch.equal(tokens.ids, plain.input_ids)
    assert tokens.ids[1, -1] == 1 and tokens.counts[0] == 7
    assert torch.all(tokens.weights == 1.0)


def test_t5_emphasis_weights_and_break(t5_tokenizer):
    tokens = t5_weighted_tokens(t5_tokenizer, ["a (cat:1.5) BREAK dog"], max_length=16)
    pieces = [t5_tokenizer(text, add_special_tokens=False).input_ids
              for text in ("a ", "cat", " dog")]
    ids = [*pieces[0], *pieces[1], *pieces[2], 1]
    assert tokens.ids[0, :len(ids)].tolist() == ids
    weights = [1.0] * len(pieces[0]) + [1.5] * len(pieces[1]) + [1.0] * (len(pieces[2]) + 1)
    assert tokens.weights[0, :len(ids)].tolist() == weights
    ignored = t5_weighted_tokens(t5_tokenizer, ["a (cat:1.5)"], max_length=16, emphasis="Ignore")
    # "Ignore" drops the brackets (apply_emphasis then leaves the states unweighted).
    assert torch.equal(ignored.ids, t5_weighted_tokens(t5_tokenizer, ["a cat"], max_length=16).ids)


def test_flux_t5_emphasis_multiplies_and_restores_the_mean(flux):
    plain = flux.encode_t5_states(["a cat"], ConditioningSettings(emphasis="Ignore"))
    weighted = flux.encode_t5_states(["a (cat:1.5)"], ConditioningSettings())
    tokens = t5_weighted_tokens(flux.t5_tokenizer, ["a (cat:1.5)"], max_length=512)
    expected = plain * tokens.weights[..., None]
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted, expected, atol=1e-6, rtol=1e-5)


def test_scheduled_and_cached_prompts_work_through_the_base_class(sd3, flux):
    [multi] = flux.encode_batch(["a [cat:dog:0.5] AND a hat"], steps=10)
    assert len(multi.parts) == 2
    first, second = multi.parts[0][0].at(0), multi.parts[0][0].at(9)
    assert not torch.equal(first.crossattn, second.crossattn)
    [again] = flux.encode_batch(["a [cat:dog:0.5] AND a hat"], steps=10)
    assert again.parts[0][0] is multi.parts[0][0]
    [negative] = sd3.encode_negative_batch([""], steps=10)
    assert negative.at(0).crossattn.shape == (77 + 256, 64)


def test_token_counter(sd3, flux):
    assert flux.token_count("a photo of a cat") == (7, 512)
    assert sd3.token_count("a photo of a cat") == (5, 75)
