"""Speed paths of the model code give the unoptimised results.

channels_last maps (diffusers parity within float32 rounding), in-place activations at
inference (bitwise equal to the autograd path), fused q/k/v projections (equal to the
separate ones, and honouring per-call parameter swaps such as LoRA's functional_call),
token merging (off = bitwise identity; on = a small, bounded change) and float32
attention over half weights.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from modules.nn.attention import attention, set_attention_upcast
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.token_merging import MapMerging, TokenMerging
from modules.nn.transformer import CrossAttention
from modules.nn.unet import UNetModel
from tests.tiny import TINY_SD15, TINY_SDXL, TINY_VAE

RELATIVE_TOLERANCE = 1e-5


def _perturbed_unet(family, seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    model = UNetModel(config=family.unet).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def _inputs(family, size: int = 16) -> tuple:
    generator = torch.Generator().manual_seed(1)
    cfg = family.unet
    x = torch.randn(2, cfg.in_channels, size, size, generator=generator)
    context = torch.randn(2, 7, cfg.context_dim, generator=generator)
    y = torch.randn(2, cfg.adm_in_channels, generator=generator) if cfg.adm_in_channels else None
    return x, torch.tensor([999.0, 250.5]), context, y


@pytest.mark.parametrize("family", [TINY_SD15, TINY_SDXL], ids=["sd15", "sdxl"])
@pytest.mark.parametrize("size", [(16, 16), (15, 11)], ids=["even", "odd"])
def test_channels_last_matches_diffusers(family, size):
    from tests.test_unet_parity import _assert_close, _pair
    from tests.test_unet_parity import _inputs as parity_inputs

    reference, ours = _pair(family)
    ours.set_channels_last(True)
    inputs = parity_inputs(family, height=size[0], width=size[1])
    with torch.inference_mode():
        expected = reference(inputs["x"], inputs["timesteps"], inputs["context"],
                             added_cond_kwargs=inputs["added_cond_kwargs"]).sample
        got = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"])
    assert got.is_contiguous()  # callers get the ordinary layout back
    _assert_close(got, expected)


def test_inference_path_is_bitwise_the_autograd_path():
    """In-place SiLU / adds under inference_mode change where results go, not their bits."""
    model = _perturbed_unet(TINY_SD15)
    x, t, context, y = _inputs(TINY_SD15)
    with torch.enable_grad():
        recorded = model(x, t, context, y)
    with torch.inference_mode():
        fast = model(x, t, context, y)
    assert torch.equal(recorded, fast)


def test_vae_channels_last_and_in_place_keep_the_result():
    torch.manual_seed(0)
    vae = AutoencoderKL(config=TINY_VAE).eval()
    z = torch.randn(1, 4, 8, 8)
    with torch.enable_grad():
        plain = vae.decode(z)
    with torch.inference_mode():
        vae.set_channels_last(True)
        fast = vae.decode(z)
        moments = vae.encode(fast).mean
    assert fast.is_contiguous() and moments.is_contiguous()
    assert (fast - plain).abs().max() <= RELATIVE_TOLERANCE * plain.abs().max()


def _attention_layer(context_dim: int | None) -> CrossAttention:
    torch.manual_seed(3)
    return CrossAttention(query_dim=16, context_dim=context_dim, heads=2, head_dim=8).eval()


def _separate_projections(layer: CrossAttention, x, context, weights=None):
    """Reference: q, k, v from their own matmuls (what the fused path replaces)."""
    w = weights or {name: getattr(layer, name).weight for name in ("to_q", "to_k", "to_v")}
    source = x if context is None else context
    q, k, v = (layer._split_heads(inp @ w[name].T)
               for name, inp in (("to_q", x), ("to_k", source), ("to_v", source)))
    out = attention(q, k, v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
    return layer.to_out(out)


@pytest.mark.parametrize("context_dim", [None, 12], ids=["self", "cross"])
def test_fused_projections_equal_separate_ones(context_dim):
    layer = _attention_layer(context_dim)
    x = torch.randn(2, 10, 16)
    context = None if context_dim is None else torch.randn(2, 5, context_dim)
    with torch.inference_mode():
        fused = layer(x, context)
        separate = _separate_projections(layer, x, context)
        identity = layer(x, context, context_transform=lambda source: (source, source))
    torch.testing.assert_close(fused, separate, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(identity, separate, rtol=1e-5, atol=1e-6)


def test_fused_projections_see_per_call_weight_swaps():
    """LoRA patches swap `to_k.weight` for one call; the fused matmul must use the swap."""
    layer = _attention_layer(None)
    x = torch.randn(2, 10, 16)
    patched_k = layer.to_k.weight + 0.5 * torch.randn_like(layer.to_k.weight)
    with torch.inference_mode():
        swapped = functional_call(layer, {"to_k.weight": patched_k}, (x,))
        expected = _separate_projections(layer, x, None, {
            "to_q": layer.to_q.weight, "to_k": patched_k, "to_v": layer.to_v.weight})
        original = layer(x)
    torch.testing.assert_close(swapped, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(swapped, original)


def test_token_merging_off_is_the_plain_model_and_on_is_close():
    model = _perturbed_unet(TINY_SD15)
    x, t, context, _ = _inputs(TINY_SD15)
    with torch.inference_mode():
        plain = model(x, t, context)
        off = model(x, t, context, token_merging=0.0)
        merged = model(x, t, context, token_merging=0.5)
    assert torch.equal(plain, off)
    assert not torch.equal(plain, merged)
    # A small change: most of the signal is kept.
    relative = (merged - plain).norm() / plain.norm()
    assert relative < 0.1


def test_merge_plan_keeps_unmerged_tokens_and_shares_group_outputs():
    merging = MapMerging(ratio=0.5, height=4, width=6, stride=2)
    tokens = torch.randn(2, 24, 8)
    plan = merging.plan(tokens)
    merged = plan.merge(tokens)
    assert merged.shape == (2, 24 - 12, 8)
    restored = plan.unmerge(merged)
    assert restored.shape == tokens.shape
    for b in range(2):
        kept = plan.src_pos[plan.kept_src[b]]
        torch.testing.assert_close(restored[b, kept], tokens[b, kept])
        # A merged source gets exactly the output of the destination it joined.
        moved = plan.src_pos[plan.merged_src[b]]
        targets = plan.dst_pos[plan.target[b]]
        torch.testing.assert_close(restored[b, moved], restored[b, targets])


def test_merging_pairs_identical_tokens_first():
    """A source equal to its destination is the most similar pair: merged first, mean unchanged."""
    merging = MapMerging(ratio=0.25, height=2, width=4, stride=2)  # 8 tokens, 2 merged
    tokens = torch.randn(1, 8, 4)
    tokens[0, 1] = tokens[0, 0]  # same as the destination of its cell (position 0)
    tokens[0, 3] = tokens[0, 2]
    plan = merging.plan(tokens)
    assert set(plan.src_pos[plan.merged_src[0]].tolist()) == {1, 3}
    torch.testing.assert_close(plan.unmerge(plan.merge(tokens)), tokens)


def test_token_merging_applies_only_at_full_resolution_and_checks_its_ratio():
    tome = TokenMerging(ratio=0.3, latent_tokens=64 * 64)
    assert tome.for_map(64, 64) is not None
    assert tome.for_map(32, 32) is None
    assert TokenMerging(ratio=0.0, latent_tokens=64).for_map(8, 8) is None
    with pytest.raises(ValueError, match="ratio"):
        TokenMerging(ratio=1.0, latent_tokens=64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_upcast_attention_computes_in_float32(dtype):
    q, k, v = (torch.randn(1, 2, 16, 8) * 30 for _ in range(3))
    reference = attention(q, k, v)
    half = attention(q.to(dtype), k.to(dtype), v.to(dtype), upcast=True)
    assert half.dtype == dtype
    torch.testing.assert_close(half.float(), reference, rtol=2e-2,
                               atol=2e-2 * reference.abs().max())


def test_upcast_is_set_on_every_attention_layer():
    model = _perturbed_unet(TINY_SD15)
    set_attention_upcast(model, True)
    layers = [m for m in model.modules() if hasattr(m, "attention_upcast")]
    assert layers and all(m.attention_upcast for m in layers)
