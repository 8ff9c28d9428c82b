"""Full-size MMDiTs have exactly the tensors of the SD3.5 single files, by name and shape.

SD3.5 Large and SD3.5 Medium are built on the meta device from `SD35_LARGE` / `SD35_MEDIUM`
and compared with the `model.diffusion_model.*` keys of the real files' layouts
(tests/fixtures/sd35_*_single_file.tsv): every tensor must be a parameter or buffer of
that shape, with nothing left over. Counts (computed from the fixtures): SD3.5 Large
8,056,627,520 parameters + the 1×192²×2432 position grid (8,146,280,768 elements in all,
923 tensors); SD3.5 Medium 2,243,171,520 + 1×384²×1536 (2,469,663,936, 665 tensors).
SD3 Medium (no fixture) has 2,028,328,000 parameters, the published 2B and the count of
diffusers' `SD3Transformer2DModel` with the same config.
"""

from __future__ import annotations

import pytest
import torch

from modules.nn.mmdit import SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM, MMDiT, MMDiTConfig
from tests.helpers.layouts import assert_same_layout, fixture_shapes

PREFIX = "model.diffusion_model."

CASES = [
    pytest.param(SD35_LARGE, "sd35_large_single_file.tsv", 923, 8_056_627_520, 89_653_248,
                 id="sd35_large"),
    pytest.param(SD35_MEDIUM, "sd35_medium_single_file.tsv", 665, 2_243_171_520, 226_492_416,
                 id="sd35_medium"),
]


def _meta_model(config: MMDiTConfig) -> MMDiT:
    with torch.device("meta"):
        return MMDiT(config=config)


@pytest.mark.parametrize(("config", "fixture", "tensors", "parameters", "grid"), CASES)
def test_mmdit_layout_matches_single_file(config, fixture, tensors, parameters, grid) -> None:
    expected = fixture_shapes(fixture, PREFIX)
    model = _meta_model(config)
    assert_same_layout(model, expected)
    assert len(expected) == tensors
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert sum(b.numel() for b in model.buffers()) == grid


@pytest.mark.parametrize(("config", "fixture"), [(SD35_LARGE, "sd35_large_single_file.tsv"),
                                                 (SD35_MEDIUM, "sd35_medium_single_file.tsv")])
def test_config_read_from_file_shapes(config, fixture) -> None:
    assert MMDiTConfig.from_shapes(fixture_shapes(fixture, PREFIX)) == config


def test_sd3_medium_parameter_count() -> None:
    model = _meta_model(SD3_MEDIUM)
    assert sum(p.numel() for p in model.parameters()) == 2_028_328_000
    assert tuple(model.pos_embed.shape) == (1, 192 * 192, 1536)
    assert not hasattr(model.joint_blocks[0].context_block.attn, "ln_q")
