"""FreeU (`modules.nn.guidance_freeu`): parity with diffusers' `enable_freeu`, and formulas.

Parity: diffusers' UNet2DConditionModel and our U-Net with the same random weights
(`_pair` of tests/test_unet_parity.py); `unet.enable_freeu(s1, s2, b1, b2)` against our
`FreeUPatch(rule="levels", version="1")`, same inputs; equal within float32 rounding
(1e-5 of the output's scale), while FreeU itself moves the output far more than that.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from modules.nn.guidance_freeu import FreeUPatch, backbone_factor, fourier_filter
from modules.nn.unet_patches import BlockPlace, UNetPatches
from tests.helpers.parity import assert_close
from tests.test_unet_parity import _inputs, _pair
from tests.tiny import TINY_SD15, TINY_SDXL

# A three-level SD1-like U-Net: FreeU's two stages are then not all of the decoder.
TINY_SD1_3 = replace(TINY_SD15, name="sd15_3level", unet=replace(
    TINY_SD15.unet, channel_mult=(1, 2, 4), transformer_depth=(1, 1, 0)))
FAMILIES = [TINY_SD15, TINY_SD1_3, TINY_SDXL]
B1, B2, S1, S2 = 1.3, 1.6, 0.7, 0.2


def _run_both(family, height=16, width=16):
    reference, ours = _pair(family)
    inputs = _inputs(family, height=height, width=width)
    patch = FreeUPatch(b1=B1, b2=B2, s1=S1, s2=S2, model_channels=family.unet.model_channels,
                       levels=len(family.unet.channel_mult), version="1", rule="levels")
    with torch.no_grad():
        plain = reference(inputs["x"], inputs["timesteps"], inputs["context"],
                          added_cond_kwargs=inputs["added_cond_kwargs"]).sample
        reference.enable_freeu(s1=S1, s2=S2, b1=B1, b2=B2)
        expected = reference(inputs["x"], inputs["timesteps"], inputs["context"],
                             added_cond_kwargs=inputs["added_cond_kwargs"]).sample
        actual = ours(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"],
                      patches=UNetPatches((patch,)))
    return plain, expected, actual


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_freeu_v1_levels_matches_diffusers_enable_freeu(family):
    plain, expected, actual = _run_both(family)
    assert (expected - plain).abs().max() > 1e-2 * plain.abs().max()  # FreeU does something
    assert_close(actual, expected, tolerance=1e-5)


def test_freeu_matches_diffusers_on_odd_sizes():
    """Non-power-of-two maps (diffusers' float32 branch) and 1-pixel sides."""
    _, expected, actual = _run_both(TINY_SDXL, height=15, width=11)
    assert_close(actual, expected, tolerance=1e-5)


def test_fourier_filter_scales_only_the_centred_box():
    """Frequency 0 sits at the centre after the shift: the constant part is scaled by s, a
    pure high frequency (checkerboard) is untouched."""
    constant = torch.full((1, 1, 8, 8), 3.0)
    assert torch.allclose(fourier_filter(constant, 0.5), constant * 0.5, atol=1e-6)
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    checker = checker.view(1, 1, 8, 8)
    assert torch.allclose(fourier_filter(checker, 0.5), checker, atol=1e-6)
    # The box is [3, 5) x [3, 5) of the shifted spectrum: frequencies -1 and 0 per axis;
    # frequency +1 (index 5) is outside it.
    ramp = torch.cos(2 * torch.pi * torch.arange(8) / 8).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    filtered = fourier_filter(ramp, 0.0)
    expected = torch.fft.ifftn(torch.fft.fftn(ramp) * _keep_only_plus_one(8)).real
    assert torch.allclose(filtered, expected, atol=1e-5)
    assert fourier_filter(constant.half(), 0.5).dtype == torch.float16


def _keep_only_plus_one(n):
    """The cos's spectrum has +1 and -1 (= n - 1) on the width axis; s=0 kills -1 only."""
    keep = torch.ones(n, n)
    keep[0, n - 1] = 0.0
    keep[0, 0] = 0.0
    return keep


def test_backbone_factor_v1_and_v2_formulas():
    h = torch.zeros(2, 4, 2, 2)
    h[0, :, 0, 0] = 4.0  # image 0: channel mean 4 at (0, 0), 0 elsewhere
    h[1] = torch.arange(4.0).view(1, 2, 2)  # image 1: channel mean 0, 1, 2, 3
    assert backbone_factor(h, 1.5, "1") == 1.5
    factor = backbone_factor(h, 1.5, "2")
    assert torch.allclose(factor[0, 0], torch.tensor([[1.5, 1.0], [1.0, 1.0]]))
    assert torch.allclose(factor[1, 0], torch.tensor([[1.0, 1.5 - 1/3], [1.5 - 1/6, 1.5]]))
    flat = torch.ones(1, 4, 1, 1)
    assert torch.equal(backbone_factor(flat, 1.5, "2"), torch.full((1, 1, 1, 1), 1.5))


def test_patch_scales_first_half_and_filters_skip_without_touching_inputs():
    h = torch.randn(1, 8, 4, 4)
    skip = torch.randn(1, 8, 4, 4)
    h_copy, skip_copy = h.clone(), skip.clone()
    patch = FreeUPatch(b1=2.0, b2=3.0, s1=0.5, s2=0.25, model_channels=2, levels=3,
                       version="1", rule="channels")
    new_h, new_skip = patch.before_output_block(h, skip, BlockPlace("output", 0, 2, None))
    assert torch.equal(h, h_copy) and torch.equal(skip, skip_copy)
    assert torch.allclose(new_h[:, :4], h[:, :4] * 2.0) and torch.equal(new_h[:, 4:], h[:, 4:])
    assert torch.allclose(new_skip, fourier_filter(skip, 0.5))
    # 4 channels = model_channels * 2: the second stage; 6 channels: none.
    four = torch.randn(1, 4, 4, 4)
    assert torch.allclose(patch.before_output_block(four, skip, BlockPlace("output", 3, 1, None)
                                                    )[0][:, :2], four[:, :2] * 3.0)
    six = torch.randn(1, 6, 4, 4)
    assert patch.before_output_block(six, skip, BlockPlace("output", 1, 2, None))[0] is six


def test_block_rules_pick_blocks_by_channels_or_by_level():
    patch = FreeUPatch(b1=2.0, b2=3.0, s1=0.5, s2=0.25, model_channels=32, levels=3,
                       rule="levels")
    h = torch.zeros(1, 64, 2, 2)
    assert patch.factors(h, BlockPlace("output", 0, 2, None)) == (2.0, 0.5)
    assert patch.factors(h, BlockPlace("output", 2, 1, None)) == (3.0, 0.25)
    assert patch.factors(h, BlockPlace("output", 4, 0, None)) is None
    by_channels = replace(patch, rule="channels")
    assert by_channels.factors(torch.zeros(1, 128, 2, 2), BlockPlace("output", 2, 1, 0)) == (
        2.0, 0.5)
    assert by_channels.factors(h, BlockPlace("output", 4, 0, 0)) == (3.0, 0.25)
