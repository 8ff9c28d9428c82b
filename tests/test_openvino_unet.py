"""The OpenVINO CPU backend computes what the eager U-Net computes.

Tiny U-Nets with random weights (SD1-like and SDXL-like, with ADM `y`): the same outputs
as the eager module within fp32 rounding, for several latent sizes (odd ones included)
on one compiled model, with ControlNet residuals, with changed weight sets (LoRAs' merged
copies, fed as inputs: one compile for every set of the same layers, no conversion), from
a template read back from the cache folder, in bf16, and a stop request that ends a
running inference.
"""

from __future__ import annotations

import gc

import pytest
import torch

pytest.importorskip("openvino", reason="the openvino extra is installed by launch.py")

from modules.models.openvino_unet import OpenVINOUNet  # noqa: E402
from modules.nn.unet import ControlResiduals, UNetModel  # noqa: E402
from tests.tiny import TINY_SD15, TINY_SDXL  # noqa: E402

TOLERANCE = 2e-5


def tiny_unet(config, seed: int = 0) -> UNetModel:
    torch.manual_seed(seed)
    unet = UNetModel(config=config).eval().requires_grad_(False)
    with torch.no_grad():  # non-zero everywhere, so every path matters
        for parameter in unet.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    unet.set_channels_last(True)
    return unet


def inputs(config, batch: int, height: int, width: int, tokens: int = 77, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, height, width, generator=generator)
    t = torch.rand(batch, generator=generator) * 999
    context = torch.randn(batch, tokens, config.context_dim, generator=generator)
    y = (torch.randn(batch, config.adm_in_channels, generator=generator)
         if config.adm_in_channels else None)
    return x, t, context, y


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    unet = tiny_unet(TINY_SD15.unet)
    return unet, OpenVINOUNet(unet=unet, cache_dir=tmp_path_factory.mktemp("ov"))


@pytest.mark.parametrize("shape", [(2, 16, 16), (1, 24, 8), (2, 13, 17), (3, 8, 40)])
def test_every_size_matches_eager_on_one_compiled_model(sd15, shape):
    unet, backend = sd15
    x, t, context, y = inputs(unet.config, *shape)
    with torch.inference_mode():
        expected = unet(x, t, context, y)
        got = backend({}, x, t, context, y)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert (got - expected).abs().max().item() < TOLERANCE
    assert list(backend._compiled) == [frozenset()]  # no compile per size


def test_control_residuals_are_added_as_eagerly(sd15):
    unet, backend = sd15
    x, t, context, y = inputs(unet.config, 2, 16, 24)
    zeros = backend._control_inputs(None, x)
    generator = torch.Generator().manual_seed(5)
    residuals = [torch.randn(z.shape, generator=generator) for z in zeros]
    control = ControlResiduals(down=tuple(residuals[:-1]), middle=residuals[-1])
    with torch.inference_mode():
        expected = unet(x, t, context, y, control=control)
        plain = unet(x, t, context, y)
        got = backend({}, x, t, context, y, control=control)
    assert (expected - plain).abs().max().item() > 1e-3  # the residuals matter
    assert (got - expected).abs().max().item() < TOLERANCE


def test_weight_sets_are_inputs_compiled_once_per_set_of_layers(sd15):
    unet, backend = sd15
    backend.template()
    template = backend._template
    names = [n for n in backend.names if "attn2.to_k" in n or "proj_in" in n]
    before = {n: unet.get_parameter(n).clone() for n in names}
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    got, expected = {}, {}
    for scale in (1.5, 0.5):  # two LoRA sets changing the same layers
        weights = {n: before[n] * scale for n in names}
        with torch.inference_mode():
            expected[scale] = torch.func.functional_call(unet, weights, (x, t, context, y))
            got[scale] = backend(weights, x, t, context, y)
        if scale == 1.5:
            entry = backend._compiled[frozenset(names)]
            compiles = backend.timings["compiles"]
        del weights
        gc.collect()
    with torch.inference_mode():
        plain = unet(x, t, context, y)
        got_plain = backend({}, x, t, context, y)  # the same model, the checkpoint's tensors
        again = backend({n: before[n] * 1.5 for n in names}, x, t, context, y)
    for scale in got:
        assert (expected[scale] - plain).abs().max().item() > 1e-3  # the weights matter
        assert (got[scale] - expected[scale]).abs().max().item() < TOLERANCE
    assert (got_plain - plain).abs().max().item() < TOLERANCE
    assert torch.equal(again, got[1.5])  # fresh tensors of the same values: read per call
    # One compile for both sets and the plain calls after them: no compile per switch.
    assert backend.timings["compiles"] == compiles
    assert list(backend._compiled) == [frozenset(names)]  # compiled_limit 1: base dropped
    assert backend._compiled[frozenset(names)] is entry and entry.inputs == tuple(names)
    assert backend._template is template  # the same graph, never converted again
    assert all(torch.equal(unet.get_parameter(n), before[n]) for n in names)  # never written
    # A set changing a layer the cached model holds as a constant needs a new compile,
    # which takes the replaced model's inputs too: going back compiles nothing.
    bias = {"out.2.bias": unet.get_parameter("out.2.bias") + 1.0}
    with torch.inference_mode():
        backend(bias, x, t, context, y)
        back = backend({n: before[n] * 0.5 for n in names}, x, t, context, y)
    assert backend.timings["compiles"] == compiles + 1
    assert list(backend._compiled) == [frozenset(names) | {"out.2.bias"}]
    assert (back - expected[0.5]).abs().max().item() < TOLERANCE


def test_half_weight_inputs_compute_as_eager(tmp_path):
    unet = tiny_unet(TINY_SD15.unet, seed=8).to(torch.bfloat16)
    backend = OpenVINOUNet(unet=unet, cache_dir=tmp_path)
    names = [n for n in backend.names if "attn1.to_q" in n or "proj_out" in n]
    weights = {n: unet.get_parameter(n) * 1.5 for n in names}  # bf16, as the patcher merges
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    with torch.inference_mode():
        got = backend(weights, x, t, context.bfloat16(), y)
        plain = backend({}, x, t, context.bfloat16(), y)  # the same model
    reference = tiny_unet(TINY_SD15.unet)
    reference.load_state_dict({k: v.float() for k, v in unet.state_dict().items()})
    with torch.inference_mode():
        expected = torch.func.functional_call(
            reference, {n: w.float() for n, w in weights.items()},
            (x, t, context.bfloat16().float(), y))
    import openvino as ov

    bound = (0.05 * expected.abs().max().item() if backend._precision(ov) == "bf16"
             else TOLERANCE)
    assert (got - expected).abs().max().item() < bound
    assert (got - plain).abs().max().item() > 1e-3  # the same model: the inputs were used
    assert list(backend._compiled) == [frozenset(names)]


def test_with_int8_linears_a_model_with_linear_inputs_serves_only_their_sets(tmp_path):
    unet = tiny_unet(TINY_SD15.unet, seed=9)
    backend = OpenVINOUNet(unet=unet, cache_dir=tmp_path, int8_linears=True)
    linears = frozenset(n for n in backend.names if backend._int8_name(n))
    conv = frozenset(n for n, p in unet.named_parameters() if p.ndim == 4)
    some = frozenset(sorted(linears)[:2])
    # Fed as inputs, linears are not int8: a call without them must not run there.
    assert backend._serves(some, some) and not backend._serves(some, frozenset())
    assert backend._serves(some | conv, some) and backend._serves(conv, frozenset())


def test_float32_weights_are_read_in_place_not_copied(tmp_path):
    unet = tiny_unet(TINY_SD15.unet)
    unet.set_channels_last(False)  # every parameter contiguous float32
    backend = OpenVINOUNet(unet=unet, cache_dir=tmp_path)
    total = 4 * sum(p.numel() for p in unet.parameters())
    assert backend._memory_needed(frozenset()) == int(0.5 * total)  # the plugin's share alone
    arrays = backend.compiled(frozenset()).arrays
    assert {a.ctypes.data for a in arrays} == {p.data_ptr() for p in unet.parameters()}
    # Channels-last convolution weights and int8 linears need copies (in their own dtype).
    unet.set_channels_last(True)
    convs = sum(p.numel() for p in unet.parameters() if not p.is_contiguous())
    assert convs > 0 and backend._memory_needed(frozenset()) == int(0.5 * total) + 4 * convs
    int8 = OpenVINOUNet(unet=unet.to(torch.bfloat16), cache_dir=tmp_path, int8_linears=True)
    linears = sum(p.numel() for n, p in unet.named_parameters() if int8._as_int8(n, p))
    # int8 copies of the linears, bf16 copies of the convolutions; other bf16 weights shared.
    assert int8._memory_needed(frozenset()) == int(0.5 * total) + linears + 2 * convs


def test_bf16_weights_are_shared_as_bf16_and_compute_as_eager(tmp_path):
    unet = tiny_unet(TINY_SD15.unet, seed=7).to(torch.bfloat16)
    backend = OpenVINOUNet(unet=unet, cache_dir=tmp_path)
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    with torch.inference_mode():
        got = backend({}, x, t, context.bfloat16(), y)
    # The same bf16 values computed in float32.
    reference = tiny_unet(TINY_SD15.unet)
    reference.load_state_dict({k: v.float() for k, v in unet.state_dict().items()})
    with torch.inference_mode():
        expected = reference(x, t, context.bfloat16().float(), y)
    # No float32 copy: the constants read the bf16 tensors themselves.
    read = {a.ctypes.data for a in backend._compiled[frozenset()].arrays}
    assert {p.data_ptr() for p in unet.parameters() if p.is_contiguous()} <= read
    import openvino as ov

    error = (got - expected).abs().max().item()
    if backend._precision(ov) == "bf16":  # a CPU with native bf16 computes in bf16
        assert error < 0.05 * expected.abs().max().item()
    else:  # elsewhere in float32, from the bf16 weights' exact values
        assert error < TOLERANCE


def test_sdxl_like_unet_with_adm_vector_and_a_cached_template(tmp_path):
    unet = tiny_unet(TINY_SDXL.unet, seed=3)
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    first = OpenVINOUNet(unet=unet, cache_dir=tmp_path)
    with torch.inference_mode():
        expected = unet(x, t, context, y)
        got = first({}, x, t, context, y)
    assert (got - expected).abs().max().item() < TOLERANCE
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert len(saved) == 2 and saved[0].endswith(".bin") and saved[1].endswith(".xml")
    second = OpenVINOUNet(unet=unet, cache_dir=tmp_path)  # reads the saved template
    with torch.inference_mode():
        again = second({}, x, t, context, y)
    assert torch.equal(again, got)


class StopAfter:
    """A stop request that fires on its n-th check."""

    def __init__(self, checks: int) -> None:
        self.checks = checks

    def check(self) -> None:
        self.checks -= 1
        if self.checks < 0:
            raise InterruptedError("stopped")


def test_a_stop_request_ends_the_inference(sd15):
    unet, backend = sd15
    x, t, context, y = inputs(unet.config, 8, 128, 128)  # long enough to be polled
    with torch.inference_mode(), pytest.raises(InterruptedError):
        backend({}, x, t, context, y, cancel=StopAfter(0))


def test_a_model_stopped_while_running_is_dropped_and_the_next_call_is_right(sd15):
    unet, backend = sd15
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    with torch.inference_mode():
        expected = unet(x, t, context, y)
        backend({}, x, t, context, y)
        compiles = backend.timings["compiles"]
        big = inputs(unet.config, 8, 128, 128)  # long enough to be polled while it runs
        for _ in range(3):  # (freeing a request that still ran crashed the process)
            with pytest.raises(InterruptedError):
                backend({}, *big, cancel=StopAfter(1))  # passes the check before it starts
            # A model whose inference was cancelled half-way is dropped: it would fail next.
            assert frozenset() not in backend._compiled
            got = backend({}, x, t, context, y)
            assert (got - expected).abs().max().item() < TOLERANCE
    assert backend.timings["compiles"] == compiles + 3


@pytest.mark.parametrize("kwargs, reason", [
    ({"token_merging": 0.5}, "token merging"),
    ({"context_transform": lambda c: c}, "hypernetwork"),
    ({"patches": [object()]}, "patches"),
])
def test_calls_that_change_the_unet_are_named_for_eager(sd15, kwargs, reason):
    assert reason in sd15[1].eager_reason(kwargs)
    assert sd15[1].eager_reason({"token_merging": 0.0, "patches": None}) is None


def test_without_room_for_the_compiled_copy_it_runs_eagerly_and_says_why(tmp_path, monkeypatch):
    import modules.models.openvino_unet as openvino_unet

    monkeypatch.setattr(openvino_unet, "free_memory", lambda device: 1024)
    unet = tiny_unet(TINY_SD15.unet, seed=4)
    backend = OpenVINOUNet(unet=unet, cache_dir=tmp_path)
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    weights = {"out.2.bias": unet.get_parameter("out.2.bias") + 1.0}
    with torch.inference_mode():
        got = backend(weights, x, t, context, y)
        expected = torch.func.functional_call(unet, weights, (x, t, context, y))
    assert torch.equal(got, expected)  # the eager module with the same weight set
    assert "MiB free" in backend.disabled and "MemoryError" in backend.disabled
    assert "to convert the U-Net" in backend.disabled  # refused before converting
    assert not list(tmp_path.iterdir())
    assert backend.eager_reason({}) == backend.disabled  # the patcher calls eagerly from now on


def test_room_to_convert_but_not_to_compile_also_runs_eagerly(tmp_path, monkeypatch):
    import modules.models.openvino_unet as openvino_unet

    unet = tiny_unet(TINY_SD15.unet, seed=4)
    OpenVINOUNet(unet=unet, cache_dir=tmp_path).template()  # the template is on disk
    monkeypatch.setattr(openvino_unet, "free_memory", lambda device: 1024)
    backend = OpenVINOUNet(unet=unet, cache_dir=tmp_path)
    assert backend.compiled(frozenset()) is None
    assert "to compile its weights" in backend.disabled and backend._template is not None


def test_int8_linears_stay_close_to_float32(tmp_path):
    unet = tiny_unet(TINY_SD15.unet, seed=6)
    x, t, context, y = inputs(unet.config, 2, 16, 16)
    int8 = OpenVINOUNet(unet=unet, cache_dir=tmp_path, int8_linears=True)
    with torch.inference_mode():
        expected = unet(x, t, context, y)
        got = int8({}, x, t, context, y)
    error = (got - expected).abs().max().item()
    # Per-row absmax int8: off by the quantisation step, not by a wrong weight.
    assert TOLERANCE < error < 0.05 * expected.abs().max().item()
