"""Full-size U-Nets and VAEs have exactly the tensors of real checkpoints, by name and shape.

The networks are built on the meta device (no memory, no init cost) from the family
declarations, and compared with the key layouts of real SD1.5, SD2.1, SDXL base and
refiner files (`tests/fixtures/*_keys.tsv`, key<TAB>shape<TAB>dtype): every
checkpoint tensor under `model.diffusion_model.` / `first_stage_model.` must be a
parameter or buffer of that shape, and nothing may be left over. Parameter counts are
checked against the published numbers (docs/model-formats.md, "Single-file checkpoint layout").
"""

from __future__ import annotations

import pytest
import torch

from modules.models import families as F
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.unet import UNetModel
from tests.helpers.layouts import assert_same_layout, fixture_shapes

CASES = [
    pytest.param(F.SD15, "sd15_keys.tsv", 859_520_964, id="sd15"),
    pytest.param(F.SD2, "sd21_keys.tsv", 865_910_724, id="sd21"),
    pytest.param(F.SDXL, "sdxl_base_keys.tsv", 2_567_463_684, id="sdxl"),
    pytest.param(F.SDXL_REFINER, "sdxl_refiner_keys.tsv", 2_259_526_660, id="sdxl_refiner"),
]
VAE_PARAMETERS = 83_653_863


@pytest.mark.parametrize(("family", "fixture", "parameters"), CASES)
def test_unet_layout_matches_checkpoint(family, fixture, parameters) -> None:
    with torch.device("meta"):
        unet = UNetModel(config=family.unet)
    assert_same_layout(unet, fixture_shapes(fixture, F.UNET_PREFIX))
    assert sum(p.numel() for p in unet.parameters()) == parameters


@pytest.mark.parametrize(("family", "fixture", "parameters"), CASES)
def test_vae_layout_matches_checkpoint(family, fixture, parameters) -> None:
    with torch.device("meta"):
        vae = AutoencoderKL(config=family.vae)
    assert_same_layout(vae, fixture_shapes(fixture, F.VAE_PREFIX))
    assert sum(p.numel() for p in vae.parameters()) == VAE_PARAMETERS
    assert sum(p.numel() for p in vae.decoder.parameters()) == 49_490_179
    assert sum(p.numel() for p in vae.encoder.parameters()) == 34_163_592


def test_inpainting_unet_has_nine_input_channels() -> None:
    with torch.device("meta"):
        unet = UNetModel(config=F.SD15.as_inpainting().unet)
    assert tuple(unet.input_blocks[0][0].weight.shape) == (320, 9, 3, 3)
    assert sum(p.numel() for p in unet.parameters()) == 859_535_364
