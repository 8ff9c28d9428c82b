"""Text encoders: OpenCLIP weights converted into HF CLIP must compute what OpenCLIP does;
full-size checkpoint key sets must fill every parameter with the right shape."""

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from modules.models import families as F
from modules.nn.configs import TextEncoderConfig
from modules.nn.text_encoders import TextEncoder, TextEncoderLoadError
from tests.tiny import TINY_CLIP

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class ReferenceResblock(nn.Module):
    """OpenCLIP's ResidualAttentionBlock, written out plainly."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()),
            ("c_proj", nn.Linear(4 * width, width))]))

    def forward(self, x, mask):
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class ReferenceOpenClipText(nn.Module):
    """OpenCLIP's text tower: the key names of `cond_stage_model.model.` in SD2/SDXL."""

    def __init__(self, width=48, heads=4, layers=3, vocab=49408, context=77, proj=40):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.randn(context, width) * 0.1)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(ReferenceResblock(width, heads)
                                                   for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.randn(width, proj) * width ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(4.6))

    def forward(self, ids):
        x = self.token_embedding(ids) + self.positional_embedding
        mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
        states = [x]
        for block in self.transformer.resblocks:
            x = block(x, mask)
            states.append(x)
        last = self.ln_final(x)
        pooled = last[torch.arange(ids.shape[0]), ids.argmax(dim=-1)] @ self.text_projection
        return states, pooled


def randomized(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + (param == 1) * 1.0)
    return module


def open_clip_ids():
    ids = torch.zeros(2, 77, dtype=torch.long)
    ids[0, :6] = torch.tensor([49406, 320, 1125, 539, 550, 49407])
    ids[1, :4] = torch.tensor([49406, 4558, 267, 49407])
    return ids


def tiny_open_clip_config(**overrides) -> TextEncoderConfig:
    base = TextEncoderConfig(source_layout="open_clip", hidden_size=48, num_layers=3, num_heads=4,
                             intermediate_size=192, hidden_act="gelu", pad_with_eos=False)
    return replace(base, **overrides)


def test_open_clip_bigg_style_matches_reference():
    reference = randomized(ReferenceOpenClipText(), seed=0).eval()
    config = tiny_open_clip_config(projection_dim=40, layer=-2, final_norm=False,
                                   output_pooled=True)
    encoder = TextEncoder(config=config).eval()
    report = encoder.load_checkpoint_weights(reference.state_dict())
    assert report.ignored == ("logit_scale",) and not report.unknown and not report.missing
    ids = open_clip_ids()
    with torch.no_grad():
        states, pooled = reference(ids)
        out = encoder(ids)
    torch.testing.assert_close(out.hidden, states[-2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.pooled, pooled, rtol=1e-5, atol=1e-5)
    assert out.hidden.abs().mean() > 0.1 and pooled.shape == (2, 40)


def test_open_clip_sd2_style_applies_final_norm_and_ignores_projection():
    reference = randomized(ReferenceOpenClipText(), seed=1).eval()
    config = tiny_open_clip_config(layer=-2, final_norm=True)
    encoder = TextEncoder(config=config).eval()
    report = encoder.load_checkpoint_weights(reference.state_dict())
    assert set(report.ignored) == {"logit_scale", "text_projection"}
    ids = open_clip_ids()
    with torch.no_grad():
        states, _ = reference(ids)
        out = encoder(ids)
    torch.testing.assert_close(out.hidden, reference.ln_final(states[-2]), rtol=1e-5, atol=1e-5)
    assert out.pooled is None


def hf_clip_l_weights(seed: int) -> dict:
    """A tiny CLIP-L in the LDM layout (`text_model.` names + position_ids)."""
    source = randomized(TextEncoder(config=TINY_CLIP), seed).transformer
    weights = {"text_model." + k: v for k, v in source.state_dict().items()}
    weights["text_model.embeddings.position_ids"] = torch.arange(77.0)[None] + 0.3
    return weights


def test_clip_l_clip_skip_matches_hf_hidden_states():
    weights = hf_clip_l_weights(seed=2)
    encoder = TextEncoder(config=TINY_CLIP).eval()
    report = encoder.load_checkpoint_weights(weights)
    assert report.ignored == ("text_model.embeddings.position_ids",)
    ids = torch.full((1, 77), 49407)
    ids[0, :3] = torch.tensor([49406, 320, 49407])
    with torch.no_grad():
        hf = encoder.transformer(input_ids=ids, output_hidden_states=True)
        default, skip2 = encoder(ids), encoder(ids, clip_skip=2)
    norm = encoder.transformer.final_layer_norm
    torch.testing.assert_close(default.hidden, hf.last_hidden_state, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(skip2.hidden, norm(hf.hidden_states[-2]), rtol=1e-5, atol=1e-5)
    assert (skip2.hidden - default.hidden).abs().max() > 1e-2
    with pytest.raises(ValueError, match="clip_skip"):
        encoder(ids, clip_skip=3)


def test_old_layout_without_text_model_prefix_and_strict_errors():
    weights = {k.removeprefix("text_model."): v for k, v in hf_clip_l_weights(seed=3).items()}
    encoder = TextEncoder(config=TINY_CLIP)
    encoder.load_checkpoint_weights(weights)
    expected = weights["embeddings.token_embedding.weight"]
    assert torch.equal(encoder.token_embedding.weight, expected)
    broken = dict(weights)
    del broken["final_layer_norm.bias"]
    broken["encoder.layers.0.mystery.weight"] = torch.zeros(1)
    with pytest.raises(TextEncoderLoadError, match="mystery.*final_layer_norm.bias"):
        encoder.load_checkpoint_weights(broken)
    report = encoder.load_checkpoint_weights(broken, strict=False)
    assert report.unknown == ("encoder.layers.0.mystery.weight",)
    assert report.missing == ("final_layer_norm.bias",)


def test_diffusers_text_encoder_2_layout_loads():
    config = tiny_open_clip_config(projection_dim=40, layer=-2, final_norm=False,
                                   output_pooled=True)
    source = randomized(TextEncoder(config=config), seed=4).transformer
    encoder = TextEncoder(config=config)
    report = encoder.load_checkpoint_weights(source.state_dict())
    assert report == type(report)((), (), ())
    assert torch.equal(encoder.transformer.text_projection.weight, source.text_projection.weight)
    # Built on "meta" and assign-loaded, the encoder is complete and runs.
    on_meta = TextEncoder(config=config, device="meta")
    on_meta.load_checkpoint_weights(source.state_dict(), assign=True)
    assert not any(t.is_meta for t in [*on_meta.parameters(), *on_meta.buffers()])
    ids = open_clip_ids()
    with torch.no_grad():
        torch.testing.assert_close(on_meta(ids).pooled, _loaded(config, source)(ids).pooled)


def _loaded(config, source):
    encoder = TextEncoder(config=config)
    encoder.load_checkpoint_weights(source.state_dict())
    return encoder


DTYPES = {"F16": torch.float16, "F32": torch.float32, "BF16": torch.bfloat16, "I64": torch.int64}


def fixture_tensors(file: str, prefix: str) -> dict:
    tensors = {}
    for line in (FIXTURES / file).read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        if key.startswith(prefix):
            dims = [int(d) for d in shape.strip("[]").split(",") if d.strip()]
            tensors[key[len(prefix):]] = torch.empty(dims, dtype=DTYPES[dtype], device="meta")
    return tensors


@pytest.mark.parametrize("family, file", [
    (F.SD15, "sd15_keys.tsv"), (F.SD2, "sd21_keys.tsv"),
    (F.SDXL, "sdxl_base_keys.tsv"), (F.SDXL_REFINER, "sdxl_refiner_keys.tsv"),
])
def test_full_size_fixture_layouts_fill_every_parameter(family, file):
    for spec in family.text_encoders:
        weights = fixture_tensors(file, spec.prefix)
        assert weights, spec.prefix
        encoder = TextEncoder(config=spec.config, device="meta")
        converted = encoder.convert(weights)
        params = {k: tuple(v.shape) for k, v in encoder.transformer.state_dict().items()}
        got = {k: tuple(v.shape) for k, v in converted.tensors.items()}
        assert got == params, spec.name
        assert not converted.unknown
        allowed = {"logit_scale", "text_projection", "text_model.embeddings.position_ids"}
        assert set(converted.ignored) <= allowed
        # The meta encoder also loads them (assign keeps meta tensors: no memory).
        encoder.load_checkpoint_weights(weights, assign=True)
