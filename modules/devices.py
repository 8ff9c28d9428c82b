"""Device, precision, layout and memory-mode choice: plain functions, nothing probed at import.

Devices, in order (`choose_device`; docs/desktops.md): CUDA (NVIDIA, and AMD through a
ROCm build of torch, which also calls its device "cuda"), Intel XPU (`torch.xpu`),
Apple's MPS, else the CPU. `--device-id N` picks the CUDA/XPU card; `--use-cpu all`
(or `sd`) forces the CPU. A GPU build of torch that sees no GPU runs on the CPU and says
why. What the probe found is an `Accelerators` record, so the tests pass recorded ones.

Per device, as A1111 sets them (its macOS start script adds `--upcast-sampling
--no-half-vae`): on MPS the VAE is float32 and attention is upcast to float32 by default;
on MPS, XPU and ROCm attention is SDPA (no xformers there).

Precision, as A1111 users know the flags:

* GPUs: fp16 weights; `--bf16` for bfloat16 instead; `--no-half` or `--precision full`
  for fp32. `--no-half-vae` keeps only the VAE in fp32. A half-precision VAE decode that
  gives NaN is redone once in fp32 (`modules/pipeline/vae_codec.py`, setting `auto_vae_precision`).
* CPU: on a CPU with native bf16 (AVX512-BF16 / AMX), full-size models run in bfloat16
  by default: an SD1.5 U-Net step is 1.66x faster than fp32 there and images stay close
  (`docs/performance.md`). Small models (the demo's 32-channel U-Net) are slower in
  bf16, so they stay fp32, as does everything on CPUs without native bf16. `--no-half`
  or `--precision full` keep fp32 everywhere; `--bf16` asks for bf16 for every model.
* `--precision autocast` (A1111's default) and `half`: Easel computes every module in
  its weights' dtype and casts at the module boundaries, so autocast adds nothing.
* `--upcast-sampling`: the sampler's latents are float32 in Easel anyway (the U-Net
  casts in and out); the flag additionally computes attention in float32 with half
  weights, which avoids the fp16 attention overflow some SD2 models hit.

`--opt-channelslast` runs convolutions on NHWC maps; on the CPU it is the default,
because oneDNN's convolutions are measurably faster there (`bench/bench_core.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

# Attribute set on modules that a memory mode keeps in RAM (models/offload.py): the
# device they compute on, so callers know where to put inputs (`execution_device`).
EXECUTION_DEVICE_ATTR = "easel_execution_device"


log = logging.getLogger("easel")


@dataclass(frozen=True)
class Accelerators:
    """What this torch build was made for and what it can see (one probe, or a record)."""

    cuda: bool = False  # torch.cuda.is_available(): NVIDIA, or AMD with a ROCm build
    xpu: bool = False  # torch.xpu.is_available(): Intel Arc / Data Center GPUs
    mps: bool = False  # torch.backends.mps.is_available(): Apple silicon
    cuda_version: str | None = None  # torch.version.cuda: a CUDA build
    hip_version: str | None = None  # torch.version.hip: a ROCm build

    @property
    def rocm(self) -> bool:
        return self.hip_version is not None


def probe_accelerators() -> Accelerators:
    """The running torch's answer (cheap; nothing is allocated on a device)."""
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return Accelerators(
        cuda=torch.cuda.is_available(),
        xpu=bool(xpu is not None and xpu.is_available()),
        mps=bool(mps is not None and mps.is_available()),
        cuda_version=getattr(torch.version, "cuda", None),
        hip_version=getattr(torch.version, "hip", None),
    )


def choose_device(args, accelerators: Accelerators | None = None) -> torch.device:
    """CUDA/ROCm, XPU, MPS, else the CPU (`--use-cpu all`/`sd` forces the CPU);
    `--device-id` picks the card on CUDA and XPU. Warnings are logged once."""
    use_cpu = set(getattr(args, "use_cpu", []) or [])
    if "all" in use_cpu or "sd" in use_cpu:
        return torch.device("cpu")
    found = accelerators or probe_accelerators()
    index = getattr(args, "device_id", None)
    for warning in device_warnings(args, found):
        _warn_once(warning)
    for kind, present in (("cuda", found.cuda), ("xpu", found.xpu)):
        if present:
            return torch.device(f"{kind}:{index}" if index is not None else kind)
    return torch.device("mps" if found.mps else "cpu")


def device_warnings(args, found: Accelerators) -> list[str]:
    """Why a GPU build of torch runs on the CPU, and flags the device chosen ignores."""
    warnings = []
    if not found.cuda and (found.cuda_version or found.hip_version):
        build = f"ROCm {found.hip_version}" if found.rocm else f"CUDA {found.cuda_version}"
        hint = ("the amdgpu/ROCm driver, HIP_VISIBLE_DEVICES, HSA_OVERRIDE_GFX_VERSION for "
                "cards ROCm does not list" if found.rocm
                else "the NVIDIA driver and CUDA_VISIBLE_DEVICES")
        where = "XPU" if found.xpu else "MPS" if found.mps else "the CPU"
        warnings.append(f"torch is a {build} build but sees no GPU (torch.cuda.is_available() "
                        f"is False; check {hint}); running on {where}")
    if (getattr(args, "device_id", None) is not None and not found.cuda and not found.xpu):
        warnings.append("--device-id selects a CUDA, ROCm or XPU card; none is available, "
                        "so it is ignored")
    return warnings


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def choose_dtype(args, device: torch.device) -> torch.dtype:
    """The weights' dtype of the U-Net and text encoders (see the module docstring)."""
    if getattr(args, "no_half", False) or getattr(args, "precision", "") == "full":
        return torch.float32
    if getattr(args, "bf16", False):
        return torch.bfloat16
    return torch.float32 if device.type == "cpu" else torch.float16


def choose_vae_dtype(args, device: torch.device) -> torch.dtype:
    """`--no-half-vae`, or MPS (A1111's macOS default: its fp16 VAE decodes to NaN/black),
    keep the VAE in float32; otherwise the weights' dtype."""
    if getattr(args, "no_half_vae", False) or device.type == "mps":
        return torch.float32
    return choose_dtype(args, device)


# U-Net width from which bf16 pays on a CPU: the demo (32 channels) is 10 % slower in
# bf16, SD1.5 / SD2 / SDXL (320) 1.66x faster (docs/performance.md).
CPU_BF16_MIN_UNET_CHANNELS = 192
# The same for a flow family's diffusion transformer (SD3.x: 1536 and up, Flux.1: 3072);
# flow families carry a placeholder U-Net config, so their width is the transformer's.
CPU_BF16_MIN_HIDDEN_SIZE = 1024

Precision = tuple[torch.dtype, torch.dtype]  # (U-Net and text encoders, VAE)


def precision_policy(
    args, device: torch.device, *, native_bf16: Callable[[], bool] | None = None,
) -> Callable[[object], Precision]:
    """Per checkpoint family (`.unet.model_channels`, or a flow family's `.diffusion`): dtypes.

    The flags decide for every model, except on a CPU with native bf16 where none of
    `--no-half`, `--precision full` and `--bf16` is given: there a full-size family runs
    in bf16 (its VAE too, unless `--no-half-vae`) and a small one in fp32.
    """
    weights, vae = choose_dtype(args, device), choose_vae_dtype(args, device)
    explicit = (getattr(args, "no_half", False) or getattr(args, "precision", "") == "full"
                or getattr(args, "bf16", False))
    if device.type != "cpu" or explicit or not (native_bf16 or cpu_has_native_bf16)():
        return lambda family: (weights, vae)

    def for_family(family) -> Precision:
        if not is_full_size(family):
            return weights, vae
        return torch.bfloat16, (vae if getattr(args, "no_half_vae", False) else torch.bfloat16)
    return for_family


def is_full_size(family) -> bool:
    """Whether a family is wide enough for bf16 to pay on a CPU (U-Net or transformer width)."""
    diffusion = getattr(family, "diffusion", None)
    if diffusion is not None:
        return diffusion.hidden_size >= CPU_BF16_MIN_HIDDEN_SIZE
    return family.unet.model_channels >= CPU_BF16_MIN_UNET_CHANNELS


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (else bf16 is emulated, and slow)."""
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_warnings(args, device: torch.device) -> list[str]:
    """Flag combinations that work but probably not as the user hoped."""
    warnings = []
    if getattr(args, "bf16", False) and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.append("--bf16: this CPU has no native bfloat16; it will be slower than fp32")
    if getattr(args, "bf16", False) and getattr(args, "no_half", False):
        warnings.append("--bf16 has no effect with --no-half (weights stay float32)")
    return warnings


def upcast_attention(args, device: torch.device | None = None) -> bool:
    """Attention in float32 over half-precision weights: `--upcast-sampling`, and the
    default on MPS (A1111's macOS flags). `device` defaults to `choose_device(args)`."""
    if getattr(args, "upcast_sampling", False):
        return True
    return (device or choose_device(args)).type == "mps"


def use_channels_last(args, device: torch.device) -> bool:
    """NHWC maps: asked for with `--opt-channelslast`, and the default on the CPU."""
    return bool(getattr(args, "opt_channelslast", False)) or device.type == "cpu"


def memory_policy(args):
    """Family -> memory mode, from `--medvram`, `--medvram-sdxl`, `--lowvram`."""
    from modules.models.offload import memory_mode

    return lambda family: memory_mode(args, is_sdxl=family.unet.adm_in_channels is not None)


def memory_stats(device: torch.device) -> dict[str, int]:
    """Free/total memory of the device in bytes (RAM for the CPU).

    Only the device's own API is called (no CUDA call for MPS or XPU). MPS shares the
    system's RAM: free is the RAM available, total what Metal recommends for one process.
    """
    if device.type == "cuda":  # NVIDIA, and AMD under ROCm
        free, total = torch.cuda.mem_get_info(device)
        return {"free": free, "total": total, "peak": torch.cuda.max_memory_allocated(device)}
    if device.type == "xpu" and hasattr(torch.xpu, "mem_get_info"):
        free, total = torch.xpu.mem_get_info(device)
        return {"free": free, "total": total, "peak": torch.xpu.max_memory_allocated(device)}
    import psutil

    memory = psutil.virtual_memory()
    stats = {"free": memory.available, "total": memory.total}
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        stats["total"] = min(memory.total, int(torch.mps.recommended_max_memory()))
        stats["peak"] = int(torch.mps.driver_allocated_memory())
    return stats


def attention_backend(args, device: torch.device | None = None,
                      accelerators: Accelerators | None = None) -> str:
    """The attention backend A1111's flags ask for ("auto" picks xformers on CUDA if present).

    `--xformers` without xformers installed falls back to SDPA (A1111 does the same). On
    MPS, XPU and ROCm builds, which have no xformers, "auto" and `--xformers` are SDPA.
    `device` defaults to `choose_device(args)`, `accelerators` to the probe.
    """
    from modules.nn.attention import xformers_available

    found = accelerators or probe_accelerators()
    device = device or choose_device(args, found)
    no_xformers = device.type in ("mps", "xpu") or (device.type == "cuda" and found.rocm)
    if getattr(args, "xformers", False) or getattr(args, "force_enable_xformers", False):
        return "xformers" if xformers_available() and not no_xformers else "sdpa"
    if (getattr(args, "opt_sub_quad_attention", False)
            or getattr(args, "opt_split_attention", False)):
        return "sliced"
    if (getattr(args, "opt_sdp_attention", False)
            or getattr(args, "opt_sdp_no_mem_attention", False)):
        return "sdpa"
    return "sdpa" if no_xformers else "auto"


def compile_mode(args, device: torch.device) -> tuple[str | None, list[str]]:
    """torch.compile mode for the U-Net ("default", "reduce-overhead") and why not, if not.

    `--cuda-graphs` is inductor's "reduce-overhead" mode, which records CUDA graphs for
    shapes that repeat (every step of a job has the same shapes); it needs CUDA, so on
    other devices it is ignored with a message (and `--compile` is used if also given).
    """
    messages = []
    if getattr(args, "cuda_graphs", False):
        if device.type == "cuda":
            return "reduce-overhead", messages
        messages.append(f"--cuda-graphs needs a CUDA device; the model runs on {device.type}, "
                        "so CUDA graphs are off")
    if getattr(args, "compile", False) or (
            device.type == "cpu" and getattr(args, "cpu_backend", "eager") == "inductor"):
        return "default", messages
    return None, messages


def cpu_backend(args, device: torch.device, openvino_missing) -> tuple[str, str]:
    """How the U-Net runs ("openvino", "inductor" or "eager") and the line saying so.

    `--cpu-backend auto` (the default) picks OpenVINO on a CPU when it is installed
    (launch.py installs it): it is the faster CPU path (docs/performance.md).
    `openvino_missing()` says why OpenVINO cannot run, or None. On other devices the flag
    does not apply and the U-Net runs as PyTorch runs it."""
    asked = getattr(args, "cpu_backend", "eager")
    int8 = getattr(args, "cpu_int8", False)
    unused = " (--cpu-int8 applies to the OpenVINO backend only, so it is off)" if int8 else ""
    if device.type != "cpu":
        note = "" if asked in ("auto", "eager") else f" (--cpu-backend {asked} is for CPUs)"
        return "eager", f"U-Net runs on {device.type} with PyTorch{note}{unused}"
    if asked in ("eager", "inductor"):
        return asked, f"CPU backend: {asked} (--cpu-backend {asked}){unused}"
    missing = openvino_missing()
    if missing is None:
        how = "default" if asked == "auto" else "--cpu-backend openvino"
        weights = ", int8 linear weights (--cpu-int8)" if int8 else ""
        return "openvino", (f"CPU backend: openvino ({how}; --cpu-backend eager to turn it "
                            f"off){weights}")
    return "eager", (f"CPU backend: eager, because {missing} (run launch.py to install "
                     f"it){unused}")


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its placer's device if a memory mode manages it, else its
    weights' device."""
    device = getattr(module, EXECUTION_DEVICE_ATTR, None)
    if device is not None:
        return device
    return next(module.parameters()).device
