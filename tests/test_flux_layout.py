"""Full-size Flux.1 transformers have exactly the tensors of BFL's files, by name and shape.

`FluxTransformer` is built from FLUX_DEV and FLUX_SCHNELL on the meta device (no memory,
no init cost) and compared with the key layouts of `flux1-dev.safetensors` and
`flux1-schnell.safetensors` (`tests/fixtures/flux1_*_transformer_bfl.tsv`,
key<TAB>shape<TAB>dtype): every file tensor must be a parameter of that shape, and
nothing may be left over. Parameter counts are those of the fixture README: 11,901,408,320
([dev]) and 11,891,178,560 ([schnell], the same without `guidance_in`).
"""

from __future__ import annotations

import pytest
import torch

from modules.models.flux_keys import flux_config_from_shapes
from modules.nn.flux import FLUX_DEV, FLUX_SCHNELL, FluxTransformer
from tests.helpers.layouts import assert_same_layout, fixture_shapes

CASES = [
    pytest.param(FLUX_DEV, "flux1_dev_transformer_bfl.tsv", 780, 11_901_408_320, id="dev"),
    pytest.param(FLUX_SCHNELL, "flux1_schnell_transformer_bfl.tsv", 776, 11_891_178_560,
                 id="schnell"),
]


@pytest.mark.parametrize(("config", "fixture", "tensors", "parameters"), CASES)
def test_flux_layout_matches_bfl_file(config, fixture, tensors, parameters) -> None:
    with torch.device("meta"):
        model = FluxTransformer(config=config)
    expected = fixture_shapes(fixture)
    assert len(expected) == tensors
    assert_same_layout(model, expected)
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert list(model.buffers()) == []


@pytest.mark.parametrize(("config", "fixture", "tensors", "parameters"), CASES)
def test_flux_loads_bfl_names_strictly(config, fixture, tensors, parameters) -> None:
    """A state dict with exactly the file's names and shapes loads with strict=True."""
    with torch.device("meta"):
        model = FluxTransformer(config=config)
        file_tensors = {key: torch.empty(shape) for key, shape in fixture_shapes(fixture).items()}
    result = model.load_state_dict(file_tensors, strict=True, assign=True)
    assert result.missing_keys == [] and result.unexpected_keys == []


@pytest.mark.parametrize(("config", "fixture", "tensors", "parameters"), CASES)
def test_config_is_read_off_the_file_shapes(config, fixture, tensors, parameters) -> None:
    assert flux_config_from_shapes(fixture_shapes(fixture)) == config


def test_config_from_shapes_follows_block_counts() -> None:
    """A derivative with fewer blocks (e.g. 8 double, 38 single) gets its own counts."""
    shapes = {key: shape for key, shape in fixture_shapes("flux1_dev_transformer_bfl.tsv").items()
              if not key.startswith("double_blocks.") or int(key.split(".")[1]) < 8}
    config = flux_config_from_shapes(shapes)
    assert (config.depth, config.depth_single_blocks, config.guidance_embed) == (8, 38, True)
