"""ControlNet unit arguments, step gating, control modes and the CFG row plumbing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.nn.controlnet import ControlNet, ControlNetConfig
from modules.sampling.cfg import CFGDenoiser, Hooks
from modules.scripts.args import ScriptArgsError, parse_args
from tests.helpers.controlnet import use_extension_package
from tests.tiny import TINY_SD15

use_extension_package()

from easel_controlnet.inject import (  # noqa: E402
    ActiveUnit,
    ControlProvider,
    ControlStepHook,
    level_scales,
    unit_active,
)
from easel_controlnet.units import ControlNetUnit  # noqa: E402


@dataclass
class Args:  # the script's Args shape, without loading the extension
    unit_0: ControlNetUnit = ControlNetUnit()
    unit_1: ControlNetUnit = ControlNetUnit()
    unit_2: ControlNetUnit = ControlNetUnit()


def parse(payload):
    return parse_args(Args, payload, script="ControlNet")


def test_list_of_unit_dicts_with_defaults() -> None:
    args = parse([{"module": "canny", "model": "control_sd15_canny [abcd1234]", "weight": 0.5,
                   "resize_mode": 0, "control_mode": "ControlNet is more important",
                   "lowvram": True, "input_image": "aGk="},
                  {"enabled": False}])
    first = args.unit_0
    assert first.enabled and first.module == "canny" and first.weight == 0.5
    assert first.resize_mode == "Just Resize" and first.low_vram and first.image == "aGk="
    assert first.control_mode == "ControlNet is more important"
    assert first.guidance_start == 0.0 and first.guidance_end == 1.0
    assert first.processor_res == -1 and first.threshold_a == -1.0 and not first.pixel_perfect
    assert not args.unit_1.enabled and not args.unit_2.enabled and not args.unit_2.active
    assert parse(None).unit_0 == ControlNetUnit()
    # {image, mask} form and fields of newer extension versions are accepted.
    unit = parse([{"image": {"image": "aQ==", "mask": "bQ=="}, "hr_option": "Both"}]).unit_0
    assert unit.image == "aQ==" and unit.mask == "bQ=="


@pytest.mark.parametrize("unit, field", [
    ({"weight": "heavy"}, "weight"),
    ({"weight": 3.0}, "weight"),
    ({"resize_mode": "Stretch"}, "resize_mode"),
    ({"control_mode": 7}, "control_mode"),
    ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_end"),
    ({"processor_res": 12.5}, "processor_res"),
    ({"module": "no_such_preprocessor"}, "module"),
    ({"enabled": "yes"}, "enabled"),
    ({"image": 5}, "image"),
    ({"colour": 1}, "colour"),
])
def test_bad_unit_values_name_the_field(unit, field) -> None:
    with pytest.raises(ScriptArgsError) as error:
        parse([unit])
    assert error.value.field == "unit_0"
    assert str(error.value).startswith(f"script ControlNet.unit_0: {field}")
    with pytest.raises(ScriptArgsError, match="unit_1"):
        parse([{}, "not a dict"])


def test_guidance_window_per_step() -> None:
    active = [step for step in range(10) if unit_active(step, 10, 0.3, 0.6)]
    assert active == [3, 4, 5, 6]
    assert [s for s in range(4) if unit_active(s, 4, 0.0, 1.0)] == [0, 1, 2, 3]
    assert [s for s in range(4) if unit_active(s, 4, 0.5, 0.5)] == [2]


def test_control_mode_scales() -> None:
    assert level_scales(13, 0.5, "Balanced") == [0.5] * 13
    soft = level_scales(13, 1.0, "My prompt is more important")
    assert soft[-1] == 1.0 and soft[0] == pytest.approx(0.825 ** 12)
    assert level_scales(10, 2.0, "ControlNet is more important") == [
        2.0 * 0.825 ** (12 - i) for i in range(10)]


def _unit(mode: str, weight: float = 1.0, start: float = 0.0, end: float = 1.0) -> ActiveUnit:
    torch.manual_seed(0)
    model = ControlNet(config=ControlNetConfig.for_unet(TINY_SD15.unet)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return ActiveUnit(model=model, hint=torch.rand(1, 3, 64, 64), weight=weight,
                      guidance_start=start, guidance_end=end, control_mode=mode)


def _run(provider, rows: int = 2):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(rows, 4, 8, 8, generator=generator)
    context = torch.randn(rows, 7, 32, generator=generator)
    with torch.no_grad():
        return provider(x, torch.tensor([500, 500]), context, None)


def test_cfg_injection_leaves_uncond_rows_alone_and_units_sum() -> None:
    balanced = _unit("Balanced")
    control = _unit("ControlNet is more important")
    rows = ([0, 0], [False, True])
    cond_only = _run(ControlProvider([control], *rows))
    assert cond_only.middle[1].abs().max() == 0 and cond_only.middle[0].abs().max() > 0
    both = _run(ControlProvider([balanced], *rows))
    assert both.middle[1].abs().max() > 0
    summed = _run(ControlProvider([balanced, control], *rows))
    for a, b, total in zip(both.down, cond_only.down, summed.down):
        assert torch.allclose(a + b, total)
    # Narrowing to rows keeps the row descriptions aligned.
    assert ControlProvider([control], [0, 1, 0], [False, False, True]).for_rows([2, 1]) \
        .row_is_uncond == [True, False]


def test_step_hook_adds_control_only_inside_the_window() -> None:
    seen: list[bool] = []

    def denoiser(x, sigma, *, context, y=None, c_concat=None, **kwargs):
        seen.append("control" in kwargs)
        return x * 0

    cond = Cond(crossattn=torch.zeros(7, 32))
    cfg = CFGDenoiser(denoiser, [MultiCond.single(ScheduledCond.constant(cond))],
                      [ScheduledCond.constant(cond)], cfg_scale=5.0, total_steps=10,
                      hooks=Hooks(before_model=[ControlStepHook([_unit("Balanced", 1, 0.3, 0.6)])]))
    for _ in range(10):
        cfg(torch.zeros(1, 4, 8, 8), torch.ones(1))
    assert [i for i, on in enumerate(seen) if on] == [3, 4, 5, 6]
