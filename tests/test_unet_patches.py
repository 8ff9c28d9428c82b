"""The guidance tools' base: U-Net patches and the CFG guidance hooks.

- A call with no patch, an empty chain or a patch that overrides nothing is bit-identical
  to a plain call, so a tool that is off costs nothing and changes nothing.
- Each hook point is reached where the docstring says, with the right places: the block
  depths of the full-size SD1.5 and SDXL U-Nets are those A1111's HyperTile tables name.
- Guidance hooks see D = uncond + scale * (cond - uncond); `rerun` gives the same
  predictions as the main pass for the same inputs, narrows the step's other inputs to
  its rows, and leaves out patches that only record the main pass.
"""

from __future__ import annotations

import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.models.families import SD15, SDXL
from modules.nn.unet import UNetModel
from modules.nn.unet_patches import UNetPatch, UNetPatches, block_places, with_patch
from modules.sampling.cfg import CFGDenoiser, Hooks
from tests.tiny import TINY_SD15, TINY_SDXL


def _model_and_inputs(family, seed: int = 0):
    torch.manual_seed(seed)
    model = UNetModel(config=family.unet).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    cfg = family.unet
    x = torch.randn(2, cfg.in_channels, 16, 16, generator=generator)
    context = torch.randn(2, 7, cfg.context_dim, generator=generator)
    y = (torch.randn(2, cfg.adm_in_channels, generator=generator)
         if cfg.adm_in_channels is not None else None)
    return model, (x, torch.tensor([900.0, 30.0]), context, y)


class Recorder(UNetPatch):
    """Overrides every hook without changing anything, and notes where it was called."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def after_input_block(self, h, place):
        self.calls.append(("after_input_block", place.index, tuple(h.shape[-2:])))
        return h

    def after_skip(self, h, place):
        self.calls.append(("after_skip", place.index, tuple(h.shape[-2:])))
        return h

    def before_output_block(self, h, skip, place):
        self.calls.append(("before_output_block", place.index, tuple(skip.shape[-2:])))
        return h, skip

    def changes_self_attention(self, place):
        return True

    def self_attention(self, q, k, v, place, attend):
        self.calls.append(("self_attention", place.block.stage, place.block.index,
                           place.height, place.width))
        return attend(q, k, v)


def test_no_patch_empty_chain_and_neutral_patches_are_bit_identical():
    for family in (TINY_SD15, TINY_SDXL):
        model, inputs = _model_and_inputs(family)
        with torch.no_grad():
            plain = model(*inputs)
            empty = model(*inputs, patches=UNetPatches())
            recorder = Recorder()
            neutral = model(*inputs, patches=UNetPatches((UNetPatch(), recorder)))
        assert torch.equal(plain, empty) and torch.equal(plain, neutral)
        stages = {call[0] for call in recorder.calls}
        assert stages == {"after_input_block", "after_skip", "before_output_block",
                          "self_attention"}
        count = len(model.input_blocks)
        assert [c[1] for c in recorder.calls if c[0] == "after_input_block"] == list(range(count))
        outputs = [c for c in recorder.calls if c[0] == "before_output_block"]
        assert [c[1] for c in outputs] == list(range(len(model.output_blocks)))
        # The decoder's first block gets the deepest skip, its last the input convolution's.
        assert outputs[0][2] == (8, 8) and outputs[-1][2] == (16, 16)


def test_a_patch_changes_the_call_where_it_says():
    class ScaleSkips(UNetPatch):
        def before_output_block(self, h, skip, place):
            return h, skip * 0.0 if place.index == 0 else skip

    model, inputs = _model_and_inputs(TINY_SD15)
    with torch.no_grad():
        plain = model(*inputs)
        changed = model(*inputs, patches=UNetPatches((ScaleSkips(),)))
    assert not torch.equal(plain, changed)


def test_self_attention_patches_chain_in_order():
    order: list[str] = []

    class Named(UNetPatch):
        def __init__(self, name):
            self.name = name

        def changes_self_attention(self, place):
            return place.block.stage == "middle"

        def self_attention(self, q, k, v, place, attend):
            order.append(self.name)
            return attend(q, k, v) * 2.0 if self.name == "outer" else attend(q, k, v)

    model, inputs = _model_and_inputs(TINY_SD15)
    with torch.no_grad():
        model(*inputs, patches=with_patch(with_patch(None, Named("outer")), Named("inner")))
    assert order == ["outer", "inner"]


def _depths(places) -> dict[int, list[str]]:
    inputs, middle, outputs = places
    table: dict[int, list[str]] = {}
    for place in [*inputs, middle, *outputs]:
        if place.depth is not None:
            table.setdefault(place.depth, []).append(f"{place.stage}{place.index}")
    return table


def test_attention_depths_of_the_full_size_unets_are_a1111s():
    """A1111's HyperTile names, per depth, the attn1 layers of SD1.5 and SDXL."""
    sd15 = _depths(block_places(transformer_depth=tuple(SD15.unet.transformer_depth),
                                num_res_blocks=SD15.unet.num_res_blocks))
    assert sd15 == {0: ["input1", "input2", "output9", "output10", "output11"],
                    1: ["input4", "input5", "output6", "output7", "output8"],
                    2: ["input7", "input8", "output3", "output4", "output5"],
                    3: ["middle0"]}
    sdxl = _depths(block_places(transformer_depth=tuple(SDXL.unet.transformer_depth),
                                num_res_blocks=SDXL.unet.num_res_blocks))
    assert sdxl == {0: ["input4", "input5", "output3", "output4", "output5"],
                    1: ["input7", "input8", "output0", "output1", "output2"],
                    2: ["middle0"]}


def _scheduled(value: float) -> ScheduledCond:
    return ScheduledCond.constant(Cond(torch.full((3, 4), value), None))


class Marker(UNetPatch):
    """A patch the fake model can see in its `patches` input."""

    def __init__(self, name: str, records: bool = False):
        self.name, self.records = name, records


def _guided(hook, *, scale=5.0, control=None, record=None):
    calls: list[dict] = []

    def denoiser(x, sigma, *, context, y=None, c_concat=None, patches=None, control=None):
        names = [p.name for p in patches.patches] if patches else []
        calls.append({"rows": context[:, 0, 0].tolist(), "patches": names, "control": control})
        return x * 0.5 + context[:, 0, 0].view(-1, 1, 1, 1)

    class Narrowable:
        def __init__(self, rows=None):
            self.rows = rows

        def for_rows(self, rows):  # narrowing composes, as ControlProvider's does
            return Narrowable(rows if self.rows is None else [self.rows[r] for r in rows])

    def before(params):
        params.unet_kwargs["patches"] = with_patch(
            with_patch(None, Marker("step")), Marker("recorder", records=True))
        params.unet_kwargs["control"] = Narrowable()

    conds = [MultiCond(((_scheduled(1.0), 1.0),)), MultiCond(((_scheduled(2.0), 1.0),))]
    cfg = CFGDenoiser(denoiser, conds, [_scheduled(-1.0), _scheduled(-2.0)], scale,
                      total_steps=1, hooks=Hooks(before_model=[before], guidance=[hook]))
    out = cfg(torch.ones(2, 1, 2, 2), torch.ones(2))
    return out, calls


def test_guidance_sees_cond_and_uncond_and_reruns_with_the_steps_inputs():
    seen = {}

    def hook(params):
        seen["cond"], seen["uncond"] = params.cond, params.uncond
        seen["again"] = params.rerun(UNetPatches((Marker("extra"),)))
        seen["again_uncond"] = params.rerun(UNetPatches(), x=params.x * 3, uncond=True)
        params.denoised = params.denoised + 100.0

    out, calls = _guided(hook)
    # Fake model: D = 0.5 x + cond value; x = 1.
    torch.testing.assert_close(seen["cond"][:, 0, 0, 0], torch.tensor([1.5, 2.5]))
    torch.testing.assert_close(seen["uncond"][:, 0, 0, 0], torch.tensor([-0.5, -1.5]))
    assert torch.equal(seen["again"], seen["cond"])
    torch.testing.assert_close(seen["again_uncond"][:, 0, 0, 0], torch.tensor([0.5, -0.5]))
    # D = U + 5 (C - U) = (-0.5 + 10, -1.5 + 20), plus the hook's 100.
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([109.5, 118.5]))
    main, extra, extra_uncond = calls
    assert main["rows"] == [1.0, 2.0, -1.0, -2.0] and main["patches"] == ["step", "recorder"]
    assert extra["rows"] == [1.0, 2.0] and extra["patches"] == ["step", "extra"]
    assert extra["control"].rows == [0, 1]  # narrowed to the positive rows
    assert extra_uncond["rows"] == [-1.0, -2.0] and extra_uncond["control"].rows == [2, 3]


def test_no_guidance_hook_leaves_the_step_alone():
    out, calls = _guided(lambda params: None)
    torch.testing.assert_close(out[:, 0, 0, 0], torch.tensor([9.5, 18.5]))
    assert len(calls) == 1
