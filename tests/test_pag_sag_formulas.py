"""PAG's and SAG's formulas on their own: scales, signs, layer names, mask, blur.

Each check would fail for a wrong sign or scale: the guidance hooks run on a fake
`GuidanceParams` whose extra pass returns a known tensor.
"""

from __future__ import annotations

import re

import pytest
import torch

from modules.nn.unet import UNetModel
from modules.nn.unet_patches import AttentionPlace, UNetPatch, UNetPatches
from modules.sampling.guidance import GuidanceParams
from modules.sampling.guidance_pag import (
    IdentityAttention,
    PAGHook,
    adaptive_scale,
    attention_names,
    diffusers_name,
    parse_layers,
    unmatched_layers,
)
from modules.sampling.guidance_sag import (
    AttentionRecorder,
    SAGHook,
    attention_mass,
    degrade,
    gaussian_blur,
    kernel_size,
    sag_mask,
)
from tests.diffusers_configs import unet_diffusers_config
from tests.tiny import TINY_SD15, TINY_SDXL


def test_adaptive_scale_falls_linearly_and_clamps_at_zero():
    assert adaptive_scale(3.0, 0.0, 100.0) == 3.0
    assert adaptive_scale(3.0, 0.01, 1000.0) == 3.0
    assert adaptive_scale(3.0, 0.01, 900.0) == pytest.approx(2.0)
    assert adaptive_scale(3.0, 0.01, 500.0) == 0.0  # 3 - 5 < 0


def _params(x, denoised, cond, uncond, rerun, sigma=2.0, step=0, total=10):
    batch = x.shape[0]
    return GuidanceParams(
        x=x, sigma=torch.full((batch,), sigma), denoised=denoised, cond=cond, uncond=uncond,
        cfg_scale=5.0, step=step, total_steps=total, rerun=rerun,
        row_images=list(range(batch)) * (2 if uncond is not None else 1),
        row_is_uncond=[False] * batch + ([True] * batch if uncond is not None else []))


def test_pag_term_sign_scale_and_window():
    x = torch.zeros(1, 4, 2, 2)
    cond, perturbed, denoised = torch.full_like(x, 1.0), torch.full_like(x, 0.25), x + 0.5
    calls = []

    def rerun(patches, *, x=None, uncond=False):
        calls.append((patches, uncond))
        return perturbed

    patch = IdentityAttention(("mid",), 1)
    hook = PAGHook(2.0, 0.0, patch, lambda sigma: torch.full_like(sigma, 500.0), 0.0, 0.5)
    params = _params(x, denoised, cond, None, rerun)
    hook(params)
    # D + s * (D_c - D_p) = 0.5 + 2 * 0.75
    assert torch.allclose(params.denoised, torch.full_like(x, 2.0))
    assert calls[0][0].patches == (patch,) and calls[0][1] is False
    late = _params(x, denoised, cond, None, rerun, step=6)
    hook(late)
    assert late.denoised is denoised and len(calls) == 1  # outside [start, end]: no pass


def test_identity_attention_returns_v_only_where_named():
    from modules.nn.unet_patches import BlockPlace

    middle = AttentionPlace(BlockPlace("middle", 0, 1, 1), 0, 4, 4)
    up = AttentionPlace(BlockPlace("output", 3, 0, 0), 0, 8, 8)
    patch = IdentityAttention(parse_layers("mid"), 1)
    assert patch.changes_self_attention(middle) and not patch.changes_self_attention(up)
    q, k, v = (torch.randn(1, 2, 16, 8) for _ in range(3))
    assert patch.self_attention(q, k, v, middle, lambda *a: None) is v


class _Places(UNetPatch):
    def __init__(self):
        self.seen: list[AttentionPlace] = []

    def changes_self_attention(self, place):
        self.seen.append(place)
        return False


@pytest.mark.parametrize("family", [TINY_SD15, TINY_SDXL], ids=lambda f: f.name)
def test_our_places_have_diffusers_attention_names(family):
    from diffusers import UNet2DConditionModel

    reference = UNet2DConditionModel(**unet_diffusers_config(family.unet))
    names = sorted(name for name, module in reference.named_modules()
                   if name.endswith("attn1"))
    assert sorted(attention_names(family.unet)) == names
    places = _Places()
    unet = UNetModel(config=family.unet)
    cfg = family.unet
    y = None if cfg.adm_in_channels is None else torch.zeros(1, cfg.adm_in_channels)
    with torch.no_grad():
        unet(torch.zeros(1, 4, 8, 8), torch.tensor([1.0]), torch.zeros(1, 3, cfg.context_dim),
             y, patches=UNetPatches((places,)))
    ours = sorted(diffusers_name(place, cfg.num_res_blocks) for place in places.seen)
    assert ours == names


def test_layer_names_as_diffusers_and_the_older_spelling():
    names = list(attention_names(TINY_SDXL.unet))

    def chosen(text):
        patterns = parse_layers(text)
        return {name for name in names if any(re.search(p, name) for p in patterns)}

    assert chosen("mid") == {n for n in names if n.startswith("mid_block")}
    assert chosen("up") == {n for n in names if n.startswith("up_blocks")}
    assert chosen("down") == {n for n in names if n.startswith("down_blocks")}
    assert chosen("up.block_0") == chosen("up_blocks.0")
    assert chosen("up.block_0.attentions_1") == {n for n in names
                                                 if n.startswith("up_blocks.0.attentions.1.")}
    assert chosen("mid.block_0") == chosen("mid")
    assert unmatched_layers(parse_layers("mid,up_blocks.7"), TINY_SDXL.unet) == ["up_blocks.7"]
    for bad in ("", "mid*", "up+", "a{2}"):
        with pytest.raises(ValueError):
            parse_layers(bad)


def test_kernel_rule_and_blur_match_diffusers():
    from diffusers.pipelines.deprecated.stable_diffusion_sag.pipeline_stable_diffusion_sag import (
        gaussian_blur_2d,
    )

    assert kernel_size(1.0) == 9 and kernel_size(2.0) == 17 and kernel_size(0.5) == 5
    image = torch.randn(2, 4, 16, 16)
    assert torch.allclose(gaussian_blur(image, 1.0), gaussian_blur_2d(image, 9, 1.0), atol=1e-6)
    assert torch.allclose(gaussian_blur(image, 1.5), gaussian_blur_2d(image, 13, 1.5), atol=1e-6)
    flat = torch.full((1, 4, 6, 6), 0.3)
    assert torch.allclose(gaussian_blur(flat, 3.0), flat)  # capped kernel, still normalised


def test_mask_threshold_is_strict_and_upsampled_nearest():
    mass = torch.tensor([[0.5, 1.0, 1.5, 2.0]])
    mask = sag_mask(mass, 2, 2, 1.0, (4, 4))
    assert mask.shape == (1, 1, 4, 4)
    assert mask[0, 0].tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert sag_mask(mass, 2, 2, 0.4, (2, 2)).sum() == 4
    x0 = torch.randn(1, 4, 4, 4)
    out = degrade(x0, mask, 1.0)
    assert torch.equal(out[..., :2, :], x0[..., :2, :])  # unmasked rows untouched
    assert not torch.allclose(out[..., 2:, :], x0[..., 2:, :])


def test_attention_mass_is_per_key_over_queries():
    probs = torch.zeros(1, 2, 3, 3)
    probs[:, :, :, 0] = 1.0  # every query attends to key 0 only
    assert attention_mass(probs).tolist() == [[3.0, 0.0, 0.0]]


def test_sag_term_sign_scale_source_and_degraded_input():
    x = torch.randn(1, 4, 4, 4)
    sigma = 2.0
    uncond, cond = torch.randn_like(x), torch.randn_like(x)
    recorder = AttentionRecorder()
    recorder.size = (2, 2)
    recorder.masses = {0: torch.zeros(4), 1: torch.tensor([0.0, 0.0, 3.0, 3.0])}
    d_deg = torch.randn_like(x)
    seen = {}

    def rerun(patches, *, x=None, uncond=False):
        seen.update(x=x, uncond=uncond)
        return d_deg

    params = _params(x, cond.clone(), cond, uncond, rerun, sigma=sigma)
    SAGHook(0.5, 1.0, 1.0, recorder)(params)
    assert seen["uncond"] is True
    eps = (x - uncond) / sigma
    mask = sag_mask(recorder.masses[1][None], 2, 2, 1.0, (4, 4))  # the uncond row's map
    x_deg = degrade(uncond, mask, 1.0) + sigma * eps
    assert torch.allclose(seen["x"], x_deg, atol=1e-6)
    # eps-space: eps += s (eps_u - eps_deg)  <=>  D -= sigma * s * (eps_u - eps_deg)
    eps_deg = (x_deg - d_deg) / sigma
    expected = cond - sigma * 0.5 * (eps - eps_deg)
    assert torch.allclose(params.denoised, expected, atol=1e-5)
    assert not torch.allclose(seen["x"], x)  # the masked half was blurred
