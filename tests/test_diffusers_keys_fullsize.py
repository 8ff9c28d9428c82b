"""The diffusers -> LDM key mapping at full size, names and shapes only.

diffusers' UNet2DConditionModel and AutoencoderKL are built on the meta device with
the configs of the real SD1.5, SD2, SDXL and refiner repos (`tests/diffusers_configs.py`
reproduces them from our family declarations); their state-dict names, mapped with
`map_unet_keys` / `map_vae_keys`, must be exactly our modules' names, with equal shapes
(VAE attention projections differ only by the two trailing 1-dims).
"""

from __future__ import annotations

import pytest
import torch

from modules.models import families as F
from modules.models.diffusers_keys import map_unet_keys, map_vae_keys
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.unet import UNetModel
from tests.diffusers_configs import unet_diffusers_config, vae_diffusers_config

FAMILIES = [F.SD15, F.SD2, F.SDXL, F.SDXL_REFINER]


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_fullsize_unet_names_map_exactly(family) -> None:
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        reference = UNet2DConditionModel(**unet_diffusers_config(family.unet))
        ours = UNetModel(config=family.unet)
    theirs = reference.state_dict()
    mapping = map_unet_keys(theirs.keys(), family.unet)
    assert mapping.unmapped == ()
    expected = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    mapped = {mapping.renames[key]: tuple(t.shape) for key, t in theirs.items()}
    assert mapped == expected


def test_fullsize_vae_names_map_exactly() -> None:
    from diffusers import AutoencoderKL as DiffusersAutoencoderKL

    with torch.device("meta"):
        reference = DiffusersAutoencoderKL(**vae_diffusers_config(F.SDXL.vae))
        ours = AutoencoderKL(config=F.SDXL.vae)
    theirs = reference.state_dict()
    mapping = map_vae_keys(theirs.keys(), F.SDXL.vae)
    assert mapping.unmapped == ()
    expected = {name: tuple(t.shape) for name, t in ours.state_dict().items()}
    # Linear [C, C] attention projections become 1x1 convolutions [C, C, 1, 1].
    mapped = {
        mapping.renames[key]: tuple(t.shape)
        + ((1, 1) if ".attn_1." in mapping.renames[key] and t.ndim == 2 else ())
        for key, t in theirs.items()
    }
    assert mapped == expected
