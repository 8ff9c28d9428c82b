"""Precision flags, memory modes, the checkpoint cache and the NaN-safe VAE decode.

CUDA-only behaviour is covered where a CPU can stand in: the placement logic runs with
a recording mover (what would move where, and in which order), and its results are
compared with the normal mode's on the CPU.
"""

from __future__ import annotations

import copy

import pytest
import torch

from modules import devices
from modules.app.cmd_args import parse_args
from modules.models.offload import ComponentPlacer, MemoryMode, memory_mode, streamed_blocks
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.unet import UNetModel
from modules.pipeline.vae_codec import decode
from tests.helpers.checkpoints import tiny_runtime
from tests.tiny import TINY_SD15, TINY_SDXL, TINY_VAE

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("flags", "device", "expected"), [
    ([], CPU, torch.float32),
    (["--bf16"], CPU, torch.bfloat16),
    ([], CUDA, torch.float16),
    (["--bf16"], CUDA, torch.bfloat16),
    (["--no-half"], CUDA, torch.float32),
    (["--precision", "full"], CUDA, torch.float32),
    (["--bf16", "--no-half"], CPU, torch.float32),
    (["--precision", "autocast"], CUDA, torch.float16),
])
def test_weight_dtype_follows_a1111_flags(flags, device, expected):
    assert devices.choose_dtype(parse_args(flags), device) == expected


def _policy(flags, device=CPU, native=True):
    return devices.precision_policy(parse_args(flags), device, native_bf16=lambda: native)


def test_cpu_with_native_bf16_runs_full_size_models_in_bf16_and_small_ones_in_fp32():
    from modules.models.families import SD15, SDXL
    from modules.training.demo_config import DEMO_FAMILY

    bf16, fp32 = (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)
    assert _policy([])(SD15) == bf16 and _policy([])(SDXL) == bf16
    assert _policy([])(DEMO_FAMILY) == fp32 and _policy([])(TINY_SD15) == fp32
    assert _policy([], native=False)(SD15) == fp32
    assert _policy(["--no-half-vae"])(SD15) == (torch.bfloat16, torch.float32)
    for flags in (["--no-half"], ["--precision", "full"]):
        assert _policy(flags)(SD15) == fp32, flags
    assert _policy(["--bf16"])(DEMO_FAMILY) == bf16  # asked for: every model
    assert _policy([], CUDA)(SD15) == (torch.float16, torch.float16)
    assert _policy([], CUDA)(DEMO_FAMILY) == (torch.float16, torch.float16)


def test_flow_families_are_judged_by_the_transformer_width():
    """Flow families carry a placeholder U-Net: their size is the transformer's hidden size."""
    from modules.models.flow_families import (
        FLUX_DEV_FAMILY,
        FLUX_SCHNELL_FAMILY,
        SD3_MEDIUM_FAMILY,
        SD35_MEDIUM_FAMILY,
    )
    from tests.flow_tiny import TINY_FLUX_DEV, TINY_SD35

    bf16, fp32 = (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)
    for family in (SD3_MEDIUM_FAMILY, SD35_MEDIUM_FAMILY, FLUX_DEV_FAMILY, FLUX_SCHNELL_FAMILY):
        assert devices.is_full_size(family) and _policy([])(family) == bf16, family.name
    for family in (TINY_SD35, TINY_FLUX_DEV):
        assert not devices.is_full_size(family) and _policy([])(family) == fp32, family.name
    assert _policy(["--bf16"])(TINY_FLUX_DEV) == bf16
    assert _policy([], native=False)(FLUX_DEV_FAMILY) == fp32


def test_manager_loads_each_family_in_the_policy_dtypes(tmp_path):
    runtime = tiny_runtime(tmp_path, {"tiny": TINY_SD15})
    runtime.models.precision = lambda family: (torch.bfloat16, torch.float32)
    loaded = runtime.models.get()
    assert {p.dtype for p in loaded.model.unet.parameters()} == {torch.bfloat16}
    assert {p.dtype for m in loaded.model.text_encoders.values()
            for p in m.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.model.vae.parameters()} == {torch.float32}


def test_vae_dtype_and_flag_helpers():
    assert devices.choose_vae_dtype(parse_args(["--no-half-vae"]), CUDA) == torch.float32
    assert devices.choose_vae_dtype(parse_args(["--bf16"]), CPU) == torch.bfloat16
    assert devices.upcast_attention(parse_args(["--upcast-sampling"]))
    assert devices.use_channels_last(parse_args([]), CPU)
    assert not devices.use_channels_last(parse_args([]), CUDA)
    assert devices.use_channels_last(parse_args(["--opt-channelslast"]), CUDA)
    warnings = devices.precision_warnings(parse_args(["--bf16", "--no-half"]), CUDA)
    assert any("--no-half" in w for w in warnings)


def test_compile_and_cuda_graph_flags():
    assert devices.compile_mode(parse_args([]), CPU) == (None, [])
    assert devices.compile_mode(parse_args(["--compile"]), CPU) == ("default", [])
    assert devices.compile_mode(parse_args(["--cuda-graphs"]), CUDA) == ("reduce-overhead", [])
    mode, messages = devices.compile_mode(parse_args(["--cuda-graphs"]), CPU)
    assert mode is None and "needs a CUDA device" in messages[0]


def test_memory_mode_flags():
    assert memory_mode(parse_args([]), is_sdxl=False) is MemoryMode.NORMAL
    assert memory_mode(parse_args(["--medvram"]), is_sdxl=False) is MemoryMode.MEDVRAM
    assert memory_mode(parse_args(["--lowvram"]), is_sdxl=True) is MemoryMode.LOWVRAM
    assert memory_mode(parse_args(["--medvram-sdxl"]), is_sdxl=False) is MemoryMode.NORMAL
    assert memory_mode(parse_args(["--medvram-sdxl"]), is_sdxl=True) is MemoryMode.MEDVRAM
    policy = devices.memory_policy(parse_args(["--medvram-sdxl"]))
    assert policy(TINY_SDXL) is MemoryMode.MEDVRAM and policy(TINY_SD15) is MemoryMode.NORMAL


# ---- placement ---------------------------------------------------------------------------

class Recorder:
    """A mover that records (module name, target) and tracks where each module 'is'."""

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.moves: list[tuple[str, str]] = []
        self.location: dict[str, str] = {}

    def __call__(self, module: torch.nn.Module, device: torch.device) -> None:
        name = self.names.get(id(module), "?")
        self.moves.append((name, device.type))
        self.location[name] = device.type


def _components():
    torch.manual_seed(0)
    unet = UNetModel(config=TINY_SD15.unet).eval()
    vae = AutoencoderKL(config=TINY_VAE).eval()
    text = torch.nn.Linear(4, 4)
    return {"clip_l": text, "unet": unet, "vae": vae}


def _names(components):
    names = {id(m): name for name, m in components.items()}
    names |= {id(block): f"unet.{index}"
              for index, block in enumerate(streamed_blocks(components["unet"]))}
    return names


def _run_job(components):
    """Text encoder -> U-Net (two steps) -> VAE decode, as a generation does."""
    x = torch.randn(1, 4, 8, 8)
    with torch.inference_mode():
        context = components["clip_l"](torch.randn(1, 7, 4)).repeat(1, 1, 8)
        for t in (999.0, 500.0):
            x = components["unet"](x, torch.tensor([t]), context)
        return components["vae"].decode(x)


def test_medvram_keeps_one_component_on_the_device_in_generation_order():
    components = _components()
    recorder = Recorder(_names(components))
    placer = ComponentPlacer(components=components, device=CUDA, mode=MemoryMode.MEDVRAM,
                             mover=recorder)
    _run_job(components)
    assert recorder.moves == [("clip_l", "cuda"), ("clip_l", "cpu"), ("unet", "cuda"),
                              ("unet", "cpu"), ("vae", "cuda")]
    assert devices.execution_device(components["unet"]) == CUDA
    placer.remove()
    recorder.moves.clear()
    _run_job(components)
    assert recorder.moves == []  # hooks gone with the placer


def test_lowvram_streams_unet_blocks_one_at_a_time():
    components = _components()
    recorder = Recorder(_names(components))
    ComponentPlacer(components=components, device=CUDA, mode=MemoryMode.LOWVRAM,
                    mover=recorder)
    _run_job(components)
    unet_moves = [m for m in recorder.moves if m[0].startswith("unet.")]
    blocks = streamed_blocks(components["unet"])
    # Every block in, then straight out, in execution order, once per step.
    first_step = unet_moves[: 2 * len(blocks)]
    assert all(first_step[i][1] == "cuda" and first_step[i + 1] == (first_step[i][0], "cpu")
               for i in range(0, len(first_step), 2))
    assert len(unet_moves) == 2 * 2 * len(blocks)
    assert ("unet", "cuda") not in recorder.moves  # the whole U-Net never moves at once
    assert recorder.location["vae"] == "cuda" and recorder.location["clip_l"] == "cpu"


@pytest.mark.parametrize("mode", [MemoryMode.MEDVRAM, MemoryMode.LOWVRAM])
def test_memory_modes_give_the_normal_result(mode):
    components = _components()
    torch.manual_seed(5)
    expected = _run_job(components)
    ComponentPlacer(components=components, device=CPU, mode=mode)
    torch.manual_seed(5)
    assert torch.equal(_run_job(components), expected)


def test_offload_all_and_restore_for_the_checkpoint_cache():
    components = _components()
    recorder = Recorder(_names(components))
    placer = ComponentPlacer(components=components, device=CUDA, mover=recorder)
    placer.offload_all()
    assert set(recorder.location.values()) == {"cpu"}
    placer.restore()
    assert set(recorder.location.values()) == {"cuda"}


# ---- NaN-safe VAE ------------------------------------------------------------------------

def _overflowing_half_vae() -> tuple[AutoencoderKL, torch.Tensor]:
    """A VAE whose first decoder conv overflows float16 (finite in float32)."""
    torch.manual_seed(0)
    vae = AutoencoderKL(config=TINY_VAE).eval()
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(3e4)
    z = torch.randn(1, 4, 8, 8) * 4
    return vae, z


def test_nan_decode_is_redone_in_float32_without_changing_the_model():
    vae, z = _overflowing_half_vae()
    with torch.inference_mode():
        reference = vae.decode(z)
    assert torch.isfinite(reference).all()
    half = copy.deepcopy(vae).half()
    with torch.inference_mode():
        assert not torch.isfinite(half.decode(z)).all()  # the failure being guarded against
    image = decode(half, z)
    assert torch.isfinite(image).all()
    torch.testing.assert_close(image, reference, rtol=1e-3, atol=1e-3 * reference.abs().max())
    assert half.dtype == torch.float16  # the shared model stays as loaded


def test_nan_fallback_can_be_turned_off():
    from modules.settings import Settings

    vae, z = _overflowing_half_vae()
    half = vae.half()
    settings = Settings().with_overrides({"auto_vae_precision": False, "tiled_vae_auto": False})
    assert not torch.isfinite(decode(half, z, settings)).all()
