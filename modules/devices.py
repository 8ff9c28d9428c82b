"""Device and precision choice: plain functions, nothing probed at import time.

CUDA (or MPS) when present, else the CPU. Weights are fp16 on GPUs unless `--no-half`
or `--precision full`; on the CPU they stay fp32 (bf16 is an explicit choice measured
in `bench/`). The VAE follows the U-Net unless `--no-half-vae`.
"""

from __future__ import annotations

import torch


def choose_device(args) -> torch.device:
    use_cpu = set(getattr(args, "use_cpu", []) or [])
    if "all" in use_cpu or "sd" in use_cpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        index = getattr(args, "device_id", None)
        return torch.device(f"cuda:{index}" if index is not None else "cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(args, device: torch.device) -> torch.dtype:
    if device.type == "cpu":
        return torch.float32
    if getattr(args, "no_half", False) or getattr(args, "precision", "") == "full":
        return torch.float32
    return torch.float16


def choose_vae_dtype(args, device: torch.device) -> torch.dtype:
    if getattr(args, "no_half_vae", False):
        return torch.float32
    return choose_dtype(args, device)


def memory_stats(device: torch.device) -> dict[str, int]:
    """Free/total memory of the device in bytes (RAM for the CPU)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return {"free": free, "total": total, "peak": torch.cuda.max_memory_allocated(device)}
    import psutil

    memory = psutil.virtual_memory()
    return {"free": memory.available, "total": memory.total}


def attention_backend(args) -> str:
    """The attention backend A1111's flags ask for ("auto" picks xformers on CUDA if present).

    `--xformers` without xformers installed falls back to SDPA (A1111 does the same).
    """
    from modules.nn.attention import xformers_available

    if getattr(args, "xformers", False) or getattr(args, "force_enable_xformers", False):
        return "xformers" if xformers_available() else "sdpa"
    if getattr(args, "opt_sub_quad_attention", False) or getattr(args, "opt_split_attention", False):
        return "sliced"
    if getattr(args, "opt_sdp_attention", False) or getattr(args, "opt_sdp_no_mem_attention", False):
        return "sdpa"
    return "auto"
