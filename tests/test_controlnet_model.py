"""Our ControlNet against diffusers' ControlNetModel on the same random weights.

Tiny configs with the real key names: diffusers' weights are written to a file in its
own layout and, renamed, in the LDM layout (`control_model.` prefix); both files load
through `load_controlnet` (layout and config from the header) and must give the same
residuals as diffusers to float32 rounding. The U-Net fed our residuals through the
`control=` hook must match diffusers' U-Net fed `down_block_additional_residuals`.
The full-size SD1.5 layout (tests/fixtures/sd15_controlnet_keys.tsv) must map onto a
meta-device SD1.5 ControlNet key for key and shape for shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from modules.models import families as F
from modules.models.controlnet_files import (
    LDM_PREFIX,
    check_compatible,
    infer_controlnet_config,
    inspect_controlnet,
    load_controlnet,
)
from modules.models.diffusers_keys import map_controlnet_keys
from modules.models.errors import ModelLoadError
from modules.nn.controlnet import ControlNet, ControlNetConfig
from tests.diffusers_configs import unet_diffusers_config
from tests.helpers.parity import perturb
from tests.test_unet_parity import _assert_close, _inputs, _pair
from tests.tiny import TINY_SD15, TINY_SDXL

FIXTURE = Path(__file__).parent / "fixtures" / "sd15_controlnet_keys.tsv"


def controlnet_diffusers_config(family) -> dict:
    """`ControlNetModel(**...)` keyword arguments for a family's U-Net config."""
    config = unet_diffusers_config(family.unet)
    for key in ("sample_size", "out_channels", "up_block_types"):
        config.pop(key)
    return config


def _reference(family, seed: int = 3):
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    reference = ControlNetModel(**controlnet_diffusers_config(family)).eval()
    perturb(reference, seed)  # zero convs start at zero: move them off it
    return reference


def _write_both_layouts(reference, folder: Path) -> tuple[Path, Path]:
    """The diffusers state dict as is, and renamed to `control_model.` LDM names."""
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    diffusers_path = folder / "diffusion_pytorch_model.safetensors"
    save_file(state, str(diffusers_path))
    header = inspect_controlnet(diffusers_path)
    ldm = {LDM_PREFIX + header.names[k]: v for k, v in state.items()}
    ldm_path = folder / "control_tiny.safetensors"
    save_file(ldm, str(ldm_path))
    return diffusers_path, ldm_path


def _hint(batch: int, height: int, width: int) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family", [TINY_SD15, TINY_SDXL], ids=lambda f: f.name)
def test_residuals_match_diffusers_in_both_layouts(family, tmp_path) -> None:
    reference = _reference(family)
    inputs = _inputs(family)
    hint = _hint(2, 128, 128)
    with torch.no_grad():
        down, middle = reference(inputs["x"], inputs["timesteps"], inputs["context"], hint,
                                 added_cond_kwargs=inputs["added_cond_kwargs"],
                                 return_dict=False)
    for path in _write_both_layouts(reference, tmp_path):
        ours = load_controlnet(path, base=family.unet)
        assert inspect_controlnet(path, base=family.unet).is_sdxl == family.is_sdxl
        with torch.no_grad():
            residuals = ours(inputs["x"], hint, inputs["timesteps"], inputs["context"],
                             inputs["y"])
        assert len(residuals.down) == len(down)
        for actual, expected in zip(residuals.down, down):
            _assert_close(actual, expected)
        _assert_close(residuals.middle, middle)


@pytest.mark.parametrize("family", [TINY_SD15, TINY_SDXL], ids=lambda f: f.name)
def test_unet_with_injection_matches_diffusers(family, tmp_path) -> None:
    reference_cn = _reference(family)
    reference_unet, ours_unet = _pair(family)
    _, ldm_path = _write_both_layouts(reference_cn, tmp_path)
    ours_cn = load_controlnet(ldm_path, base=family.unet)
    inputs = _inputs(family)
    hint = _hint(2, 128, 128)
    with torch.no_grad():
        down, middle = reference_cn(inputs["x"], inputs["timesteps"], inputs["context"], hint,
                                    added_cond_kwargs=inputs["added_cond_kwargs"],
                                    return_dict=False)
        expected = reference_unet(inputs["x"], inputs["timesteps"], inputs["context"],
                                  added_cond_kwargs=inputs["added_cond_kwargs"],
                                  down_block_additional_residuals=down,
                                  mid_block_additional_residual=middle).sample
        # The ControlSource form: residuals computed from the U-Net's own inputs.
        source = lambda x, t, context, y, cancel=None: ours_cn(  # noqa: E731
            x, hint, t, context, y, cancel=cancel)
        actual = ours_unet(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"],
                           control=source)
        plain = ours_unet(inputs["x"], inputs["timesteps"], inputs["context"], inputs["y"])
    _assert_close(actual, expected)
    assert (actual - plain).abs().max() > 1e-3


def _fixture_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in FIXTURE.read_text().splitlines()[1:]:
        key, shape, _ = line.split("\t")
        shapes[key] = tuple(int(n) for n in shape.strip("[]").split(",") if n.strip())
    return shapes


def test_full_size_sd15_layout_maps_onto_our_controlnet() -> None:
    shapes = _fixture_shapes()
    assert all(key.startswith(LDM_PREFIX) for key in shapes)
    stripped = {key[len(LDM_PREFIX):]: shape for key, shape in shapes.items()}
    config = infer_controlnet_config(stripped, base=F.SD15.unet)
    assert config == ControlNetConfig.for_unet(F.SD15.unet)
    with torch.device("meta"):
        model = ControlNet(config=config)
    ours = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert ours == stripped  # every key maps, nothing left over, same shapes
    # Without a base model, SD1's head count is assumed from the shapes.
    assert infer_controlnet_config(stripped).unet == F.SD15.unet


def test_full_size_diffusers_names_map_to_the_fixture() -> None:
    from diffusers import ControlNetModel

    with torch.device("meta"):
        reference = ControlNetModel(**controlnet_diffusers_config(F.SD15))
    structure = F.SD15.unet
    mapping = map_controlnet_keys(reference.state_dict().keys(), structure)
    assert mapping.unmapped == ()
    expected = {key[len(LDM_PREFIX):] for key in _fixture_shapes()}
    assert set(mapping.renames.values()) == expected


def test_sdxl_controlnet_is_refused_for_an_sd1_model(tmp_path) -> None:
    _, ldm_path = _write_both_layouts(_reference(TINY_SDXL), tmp_path)
    header = inspect_controlnet(ldm_path, base=TINY_SDXL.unet)
    with pytest.raises(ModelLoadError, match="is for SDXL"):
        check_compatible(header, TINY_SD15.unet)
    with pytest.raises(ModelLoadError, match="is for SDXL"):
        load_controlnet(ldm_path, base=TINY_SD15.unet)


def test_files_that_are_not_controlnets_are_named_in_the_error(tmp_path) -> None:
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(ModelLoadError, match="not a ControlNet"):
        inspect_controlnet(path)
    adapter = tmp_path / "t2i.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2), "body.0.block2.weight": torch.zeros(2)},
              str(adapter))
    with pytest.raises(ModelLoadError, match="T2I-Adapter"):
        inspect_controlnet(adapter)
