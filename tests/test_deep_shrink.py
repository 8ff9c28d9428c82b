"""Kohya Deep Shrink (`modules.nn.guidance_deep_shrink`) against its definition.

Through our tiny SD1 U-Net (encoder blocks: 0 input conv, 1 res at level 0, 2 the
downsampling block, 3 res at level 1), a recording patch after the shrink sees every
map: after block N the map that flows on is 1/factor the size, the kept skip is full
size (after skip) or small too (before), and no other block changes; the decoder's `h`
is resized to each skip's size with the upscale method, and the output is full size.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from modules.nn.guidance_deep_shrink import DeepShrinkPatch, resize, shrunk_size
from modules.nn.unet import UNetModel
from modules.nn.unet_patches import BlockPlace, UNetPatch, UNetPatches
from modules.scripts.args import ScriptArgsError, parse_args
from modules.scripts.builtin.deep_shrink import DeepShrink, DeepShrinkArgs
from modules.scripts.builtin.freeu import FreeU, FreeUArgs
from tests.flow_tiny import TINY_FLUX_DEV
from tests.tiny import TINY_SD15


class Recorder(UNetPatch):
    """Records the size of each encoder block's kept skip and of the map flowing on."""

    def __init__(self):
        self.skips, self.flows, self.decoder = {}, {}, {}

    def after_input_block(self, h, place):
        self.skips[place.index] = tuple(h.shape[-2:])
        return h

    def after_skip(self, h, place):
        self.flows[place.index] = tuple(h.shape[-2:])
        return h

    def before_output_block(self, h, skip, place):
        self.decoder[place.index] = (tuple(h.shape[-2:]), tuple(skip.shape[-2:]))
        return h, skip


def _run(patch: DeepShrinkPatch | None, size: int = 16):
    torch.manual_seed(0)
    unet = UNetModel(config=TINY_SD15.unet).eval()
    recorder = Recorder()
    patches = (patch, recorder) if patch else (recorder,)
    x = torch.randn(1, 4, size, size)
    with torch.no_grad():
        out = unet(x, torch.tensor([500.0]), torch.randn(1, 3, 32),
                   patches=UNetPatches(patches))
    return out, recorder


def test_map_after_block_is_shrunk_and_the_rest_follows():
    _, plain = _run(None)
    assert plain.flows == {0: (16, 16), 1: (16, 16), 2: (8, 8), 3: (8, 8)}
    out, after = _run(DeepShrinkPatch(block=1, downscale_factor=2.0, after_skip_connection=True))
    assert out.shape == (1, 4, 16, 16)
    assert after.skips[1] == (16, 16) and after.flows[1] == (8, 8)  # skip kept full size
    assert after.flows[0] == (16, 16) and after.flows[2] == (4, 4)
    _, before = _run(DeepShrinkPatch(block=1, downscale_factor=2.0, after_skip_connection=False))
    assert before.skips[1] == (8, 8) and before.flows[1] == (8, 8)  # the skip is small too
    # Another block number shrinks another block: block 2 leaves block 1 alone.
    _, other = _run(DeepShrinkPatch(block=2, downscale_factor=4.0))
    assert other.flows[1] == (16, 16) and other.skips[2] == (8, 8) and other.flows[2] == (2, 2)
    # In the decoder, h always meets its skip at the skip's size (resized where they differ).
    _, shrunk = _run(DeepShrinkPatch(block=2, downscale_factor=2.0))
    assert shrunk.decoder[1] == ((8, 8), (8, 8))  # h was 4x4 when it met block 2's skip


def test_before_output_block_resizes_h_to_the_skip_with_the_upscale_method():
    h, skip = torch.randn(1, 3, 4, 4), torch.randn(1, 3, 8, 8)
    place = BlockPlace("output", 2, 1, None)
    for method in ("bicubic", "bilinear"):
        new_h, same = DeepShrinkPatch(block=3, upscale_method=method).before_output_block(
            h, skip, place)
        assert same is skip
        assert torch.equal(new_h, F.interpolate(h, size=(8, 8), mode=method,
                                                align_corners=False))
    new_h, _ = DeepShrinkPatch(block=3, upscale_method="nearest-exact").before_output_block(
        h, skip, place)
    assert torch.equal(new_h[..., ::2, ::2], h)
    equal = torch.randn(1, 3, 8, 8)
    assert DeepShrinkPatch(block=3).before_output_block(equal, skip, place)[0] is equal


def test_shrink_uses_the_downscale_method_and_rounds():
    h = torch.randn(1, 2, 15, 9)
    patch = DeepShrinkPatch(block=3, downscale_factor=3.0, downscale_method="area")
    shrunk = patch.after_skip(h, BlockPlace("input", 3, 1, None))
    assert torch.equal(shrunk, F.interpolate(h, size=(5, 3), mode="area"))
    assert shrunk_size(15, 9, 2.0) == (8, 4) and shrunk_size(1, 1, 9.0) == (1, 1)
    assert patch.after_skip(h, BlockPlace("input", 4, 1, None)) is h
    assert patch.after_input_block(h, BlockPlace("input", 3, 1, None)) is h  # after skip only
    with pytest.raises(ValueError):
        resize(h, (2, 2), "bislerp")


def test_args_validation_names_the_field():
    with pytest.raises(ScriptArgsError, match="block_number"):
        parse_args(DeepShrinkArgs, [True, 40], script="Kohya HRFix Integrated")
    with pytest.raises(ScriptArgsError, match="downscale_factor"):
        parse_args(DeepShrinkArgs, {"downscale_factor": 10.0}, script="Kohya HRFix Integrated")
    with pytest.raises(ScriptArgsError, match="upscale_method"):
        parse_args(DeepShrinkArgs, {"upscale_method": "lanczos"}, script="k")
    with pytest.raises(ScriptArgsError, match="version"):
        parse_args(FreeUArgs, {"version": "3"}, script="FreeU")
    args = parse_args(DeepShrinkArgs, [True], script="k")
    assert (args.block_number, args.downscale_factor, args.end_percent) == (3, 2.0, 0.35)


def _plan(family):
    return SimpleNamespace(loaded=SimpleNamespace(family=family), warnings=[],
                           extra_params={})


def _sampling():
    return SimpleNamespace(cfg_hooks=SimpleNamespace(before_model=[]))


@pytest.mark.parametrize("script,args", [(FreeU(), FreeUArgs(enabled=True)),
                                         (DeepShrink(), DeepShrinkArgs(enabled=True))])
def test_flow_models_get_a_warning_and_no_hook(script, args):
    plan, sampling = _plan(TINY_FLUX_DEV), _sampling()
    script.process(plan, args)
    script.process_before_every_sampling(plan, args, sampling)
    assert sampling.cfg_hooks.before_model == [] and plan.extra_params == {}
    assert len(plan.warnings) == 1 and "applies to U-Net models" in plan.warnings[0]
    assert TINY_FLUX_DEV.label in plan.warnings[0]


def test_missing_block_is_a_warning_and_no_hook():
    plan, sampling = _plan(TINY_SD15), _sampling()
    args = DeepShrinkArgs(enabled=True, block_number=4)  # tiny SD1 has blocks 0..3
    DeepShrink().process(plan, args)
    DeepShrink().process_before_every_sampling(plan, args, sampling)
    assert sampling.cfg_hooks.before_model == [] and plan.extra_params == {}
    assert plan.warnings == ["Kohya HRFix (Deep Shrink): block_number 4 does not exist in this "
                             "model (its encoder blocks are 0..3); not applied"]
    args.block_number = 3
    DeepShrink().process_before_every_sampling(plan, args, sampling)
    assert len(sampling.cfg_hooks.before_model) == 1


def test_window_hook_adds_the_patch_only_inside_the_window():
    plan, sampling = _plan(TINY_SD15), _sampling()
    DeepShrink().process_before_every_sampling(
        plan, DeepShrinkArgs(enabled=True, start_percent=0.2, end_percent=0.5), sampling)
    hook = sampling.cfg_hooks.before_model[0]
    active = []
    for step in range(10):
        params = SimpleNamespace(step=step, total_steps=10, unet_kwargs={})
        hook(params)
        active.append(bool(params.unet_kwargs.get("patches")))
    assert active == [False, False, True, True, True, True, False, False, False, False]


def test_pasted_forge_infotext_fills_both_scripts():
    from modules.infotext import parse_infotext
    from modules.pipeline.infotext_fields import infotext_to_alwayson

    text = ("a square\nSteps: 4, Sampler: Euler, freeu_enabled: True, freeu_b1: 1.3, "
            "freeu_b2: 1.4, freeu_s1: 0.9, freeu_s2: 0.2, freeu_version: 1, "
            "kohya_hrfix_enabled: True, kohya_hrfix_block_number: 5, "
            "kohya_hrfix_downscale_factor: 1.5, kohya_hrfix_start_percent: 0.1, "
            "kohya_hrfix_end_percent: 0.4, kohya_hrfix_downscale_after_skip: False, "
            "kohya_hrfix_downscale_method: area, kohya_hrfix_upscale_method: bislerp")
    found = infotext_to_alwayson(parse_infotext(text), [FreeU(), DeepShrink()])
    assert found[FreeU().title()]["args"] == {"enabled": True, "b1": 1.3, "b2": 1.4, "s1": 0.9,
                                              "s2": 0.2, "version": "1"}
    # "bislerp" is not offered: left out, so the field keeps its value.
    assert found[DeepShrink().title()]["args"] == {
        "enabled": True, "block_number": 5, "downscale_factor": 1.5, "start_percent": 0.1,
        "end_percent": 0.4, "downscale_after_skip": False, "downscale_method": "area"}
