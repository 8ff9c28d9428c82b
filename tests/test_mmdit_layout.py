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

from pathlib import Path

import pytest
import torch

from modules.nn.mmdit import SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM, MMDiT, MMDiTConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PREFIX = "model.diffusion_model."

CASES = [
    pytest.param(SD35_LARGE, "sd35_large_single_file.tsv", 923, 8_056_627_520, 89_653_248,
                 id="sd35_large"),
    pytest.param(SD35_MEDIUM, "sd35_medium_single_file.tsv", 665, 2_243_171_520, 226_492_416,
                 id="sd35_medium"),
]


def fixture_shapes(name: str, prefix: str = PREFIX) -> dict[str, tuple[int, ...]]:
    """The shapes of the fixture's tensors under `prefix`, keyed without it."""
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"fixture {path} not available")
    shapes = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape, _dtype = line.split("\t")
        if key.startswith(prefix):
            dims = shape.strip("[]")
            shapes[key[len(prefix):]] = tuple(int(d) for d in dims.split(",")) if dims else ()
    return shapes


def _meta_model(config: MMDiTConfig) -> MMDiT:
    with torch.device("meta"):
        return MMDiT(config=config)


@pytest.mark.parametrize(("config", "fixture", "tensors", "parameters", "grid"), CASES)
def test_mmdit_layout_matches_single_file(config, fixture, tensors, parameters, grid) -> None:
    expected = fixture_shapes(fixture)
    model = _meta_model(config)
    actual = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert sorted(set(expected) - set(actual)) == [], "file tensors the model lacks"
    assert sorted(set(actual) - set(expected)) == [], "model tensors the file lacks"
    wrong = {key: (actual[key], shape) for key, shape in expected.items() if actual[key] != shape}
    assert wrong == {}, "shape mismatches (model, file)"
    assert len(expected) == tensors
    assert sum(p.numel() for p in model.parameters()) == parameters
    assert sum(b.numel() for b in model.buffers()) == grid


@pytest.mark.parametrize(("config", "fixture"), [(SD35_LARGE, "sd35_large_single_file.tsv"),
                                                 (SD35_MEDIUM, "sd35_medium_single_file.tsv")])
def test_config_read_from_file_shapes(config, fixture) -> None:
    assert MMDiTConfig.from_shapes(fixture_shapes(fixture)) == config


def test_sd3_medium_parameter_count() -> None:
    model = _meta_model(SD3_MEDIUM)
    assert sum(p.numel() for p in model.parameters()) == 2_028_328_000
    assert tuple(model.pos_embed.shape) == (1, 192 * 192, 1536)
    assert not hasattr(model.joint_blocks[0].context_block.attn, "ln_q")
