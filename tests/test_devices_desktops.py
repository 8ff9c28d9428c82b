"""Device and dtype policy on Apple silicon (MPS), Intel (XPU) and AMD (ROCm), with
recorded `Accelerators` in place of a probe, as the CUDA policy is tested."""

from __future__ import annotations

import logging

import pytest
import torch

from modules import devices
from modules.app.cmd_args import parse_args
from modules.devices import Accelerators

CPU_BUILD = Accelerators()
NVIDIA = Accelerators(cuda=True, cuda_version="12.4")
ROCM = Accelerators(cuda=True, hip_version="6.2.41133")
XPU = Accelerators(xpu=True)
MAC = Accelerators(mps=True)
CUDA_BUILD_NO_GPU = Accelerators(cuda_version="12.4")
ROCM_BUILD_NO_GPU = Accelerators(hip_version="6.2.41133")


@pytest.mark.parametrize("found, flags, expected", [
    (NVIDIA, [], "cuda"), (NVIDIA, ["--device-id", "1"], "cuda:1"),
    (ROCM, [], "cuda"), (ROCM, ["--device-id", "2"], "cuda:2"),
    (XPU, [], "xpu"), (XPU, ["--device-id", "1"], "xpu:1"),
    (MAC, [], "mps"), (CPU_BUILD, [], "cpu"),
    (MAC, ["--use-cpu", "all"], "cpu"), (XPU, ["--use-cpu", "sd"], "cpu"),
    (ROCM, ["--use-cpu", "all"], "cpu"),
    (CUDA_BUILD_NO_GPU, [], "cpu"),
])
def test_device_choice(found, flags, expected):
    assert devices.choose_device(parse_args(flags), found) == torch.device(expected)


def test_the_probe_answers_for_this_cpu_build():
    found = devices.probe_accelerators()
    assert found == Accelerators(cuda=torch.cuda.is_available(), xpu=found.xpu, mps=found.mps,
                                 cuda_version=torch.version.cuda,
                                 hip_version=getattr(torch.version, "hip", None))
    if not (found.cuda or found.xpu or found.mps):
        assert devices.choose_device(parse_args([])) == torch.device("cpu")


@pytest.mark.parametrize("found, names", [
    (CUDA_BUILD_NO_GPU, ["CUDA 12.4", "NVIDIA driver", "running on the CPU"]),
    (ROCM_BUILD_NO_GPU, ["ROCm 6.2", "HIP_VISIBLE_DEVICES", "HSA_OVERRIDE_GFX_VERSION"]),
])
def test_a_gpu_build_that_sees_no_gpu_says_why(caplog, monkeypatch, found, names):
    monkeypatch.setattr(devices, "_warned", set())
    [warning] = devices.device_warnings(parse_args([]), found)
    assert all(name in warning for name in names)
    with caplog.at_level(logging.WARNING, logger="easel"):
        devices.choose_device(parse_args([]), found)
        devices.choose_device(parse_args([]), found)
    logged = [r.getMessage() for r in caplog.records if r.getMessage() == warning]
    assert len(logged) == 1  # once per process, however often the device is chosen


def test_device_id_without_a_card_is_reported_and_cpu_builds_are_quiet():
    assert devices.device_warnings(parse_args([]), CPU_BUILD) == []
    assert devices.device_warnings(parse_args([]), MAC) == []
    assert devices.device_warnings(parse_args([]), NVIDIA) == []
    [warning] = devices.device_warnings(parse_args(["--device-id", "1"]), MAC)
    assert "--device-id" in warning and "ignored" in warning


@pytest.mark.parametrize("device", ["mps", "xpu", "cuda"])
def test_gpus_use_half_weights_and_flags_still_decide(device):
    device = torch.device(device)
    assert devices.choose_dtype(parse_args([]), device) == torch.float16
    assert devices.choose_dtype(parse_args(["--no-half"]), device) == torch.float32
    assert devices.choose_dtype(parse_args(["--bf16"]), device) == torch.bfloat16
    weights, _ = devices.precision_policy(parse_args([]), device)(None)
    assert weights == torch.float16


def test_mps_defaults_to_a1111s_macos_flags():
    """A1111's macOS script adds --upcast-sampling --no-half-vae: the same by default."""
    mps, xpu, cuda = torch.device("mps"), torch.device("xpu"), torch.device("cuda")
    assert devices.choose_vae_dtype(parse_args([]), mps) == torch.float32
    assert devices.precision_policy(parse_args([]), mps)(None) == (torch.float16, torch.float32)
    assert devices.upcast_attention(parse_args([]), mps)
    for other in (xpu, cuda):
        assert devices.choose_vae_dtype(parse_args([]), other) == torch.float16
        assert not devices.upcast_attention(parse_args([]), other)
        assert devices.upcast_attention(parse_args(["--upcast-sampling"]), other)
    assert devices.choose_vae_dtype(parse_args(["--no-half"]), mps) == torch.float32


@pytest.mark.parametrize("found, device", [
    (MAC, "mps"), (XPU, "xpu"), (ROCM, "cuda"),
])
def test_mps_xpu_and_rocm_attend_through_sdpa(found, device):
    device = torch.device(device)
    for flags in ([], ["--xformers"], ["--opt-sdp-attention"]):
        assert devices.attention_backend(parse_args(flags), device, found) == "sdpa"
    assert devices.attention_backend(parse_args(["--opt-sub-quad-attention"]), device,
                                     found) == "sliced"


def test_nvidia_keeps_auto_and_xformers():
    cuda = torch.device("cuda")
    assert devices.attention_backend(parse_args([]), cuda, NVIDIA) == "auto"
    # xformers is not installed here, so the flag falls back to SDPA as A1111 does.
    assert devices.attention_backend(parse_args(["--xformers"]), cuda, NVIDIA) == "sdpa"


def test_cuda_only_features_are_refused_elsewhere():
    for device in ("mps", "xpu"):
        mode, messages = devices.compile_mode(parse_args(["--cuda-graphs"]), torch.device(device))
        assert mode is None and "needs a CUDA device" in messages[0]


def test_memory_stats_of_a_cpu_and_mps_call_no_cuda_function(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError("a CUDA call on a non-CUDA device")
    monkeypatch.setattr(torch.cuda, "mem_get_info", no_cuda)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", no_cuda)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 8 << 30, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 1 << 30, raising=False)
    stats = devices.memory_stats(torch.device("mps"))
    assert stats["total"] <= 8 << 30 and stats["peak"] == 1 << 30 and stats["free"] > 0
    assert devices.memory_stats(torch.device("cpu"))["free"] > 0


def test_seed_noise_for_mps_and_xpu_is_drawn_on_the_cpu():
    from modules.sampling.seeds import generator_device

    for device in ("mps", "xpu"):
        for source in ("GPU", "CPU"):
            assert generator_device(source, torch.device(device)) == torch.device("cpu")
