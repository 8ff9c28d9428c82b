"""GPU benchmark: Easel against diffusers on one CUDA device, in one command (~5 minutes).

    PYTHONPATH=. .venv/bin/python bench/bench_gpu.py             # on a CUDA machine
    PYTHONPATH=. .venv/bin/python bench/bench_gpu.py --dry-run   # tiny models on the CPU

Prints a short table:

* SD1.5-size U-Net, 512x512 (64x64 latent), batch 1 with CFG (a U-Net batch of 2 per
  step), fp16, it/s: Easel default (SDPA), Easel with `torch.compile` (the `--compile`
  flag), Easel with CUDA graphs (`--cuda-graphs`), diffusers `UNet2DConditionModel` (SDPA).
  Both hold the same random weights (diffusers' init mapped to our names).
* SDXL-size U-Net at 1024x1024 (128x128 latent), same measurement, Easel and diffusers.
* Peak VRAM of one SD1.5 512x512 job (text encoder, 2 CFG steps, VAE decode) in the
  normal, `--medvram` and `--lowvram` modes (`modules/models/offload.py`).
* SD3.5 Medium and Flux.1 [schnell] at 1024x1024 in bf16 (bench/gpu_flow.py): it/s of
  diffusers and of Easel dense, float8 and GGUF Q8_0, and one job's peak VRAM in the
  normal and `--medvram` modes. `--flow skip` / `--flow only` leave them out / run them
  alone (each half fits the 10-minute command limit of a lent GPU).

Targets (issue 10): SD1.5 >= 60 it/s default and >= 100 it/s compiled on an H100; SDXL
1024 >= 16 it/s; SD1.5 peak VRAM <= 3.5 GB default, <= 2 GB medvram.
`--dry-run` runs every code path on scaled-down models on the CPU (no timings worth
reading; compile uses the "eager" backend), so the script is known to work before a
GPU is lent.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.extras import require_test_extras  # noqa: E402
from bench.gpu_flow import flow_rows  # noqa: E402
from bench.pipeline_worker import build_unets, build_vaes  # noqa: E402


@dataclass(frozen=True)
class Setup:
    device: torch.device
    dtype: torch.dtype
    families: tuple  # (SD1.5-like, SDXL-like)
    sizes: tuple[int, int]  # latent sides for the two families
    steps: int
    warmup: int
    compile_backend: str
    dry_run: bool


def setup(dry_run: bool) -> Setup:
    if dry_run:
        from tests.tiny import TINY_SD15, TINY_SDXL

        return Setup(torch.device("cpu"), torch.float32, (TINY_SD15, TINY_SDXL), (8, 16),
                     steps=2, warmup=1, compile_backend="eager", dry_run=True)
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA device (or --dry-run)")
    from modules.models.families import SD15, SDXL

    return Setup(torch.device("cuda"), torch.float16, (SD15, SDXL), (64, 128),
                 steps=40, warmup=5, compile_backend="inductor", dry_run=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def unet_inputs(family, side: int, s: Setup) -> dict:
    generator = torch.Generator().manual_seed(0)
    cfg = family.unet
    inputs = {"x": torch.randn(2, cfg.in_channels, side, side, generator=generator),
              "t": torch.tensor([500.0, 500.0]),
              "context": torch.randn(2, 77, cfg.context_dim, generator=generator)}
    if cfg.adm_in_channels:
        inputs["y"] = torch.randn(2, cfg.adm_in_channels, generator=generator)
    return {k: v.to(s.device, s.dtype if v.is_floating_point() and k != "t" else None)
            for k, v in inputs.items()}


def diffusers_kwargs(family, inputs: dict) -> dict:
    """diffusers' SDXL inputs: the ADM vector split into pooled text and time ids."""
    if "y" not in inputs:
        return {}
    from tests.diffusers_configs import ADM_TIME_EMBED_DIM

    text = inputs["y"][:, : family.unet.adm_in_channels - 6 * ADM_TIME_EMBED_DIM]
    time_ids = torch.tensor([[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0]] * 2,
                            device=text.device, dtype=text.dtype)
    return {"added_cond_kwargs": {"text_embeds": text, "time_ids": time_ids}}


def iterations_per_second(step, s: Setup) -> float:
    """CFG steps per second (one step = one U-Net call on the batch of 2)."""
    with torch.inference_mode():
        for _ in range(s.warmup):
            step()
        sync(s.device)
        start = time.perf_counter()
        for _ in range(s.steps):
            step()
        sync(s.device)
    return s.steps / (time.perf_counter() - start)


def speed_rows(family, side: int, s: Setup, *, compiled: bool) -> list[dict]:
    ours, theirs = build_unets(family, s.dtype)
    ours.set_channels_last(s.device.type == "cpu")  # the app's default per device
    ours.to(s.device), theirs.to(s.device)
    inputs = unet_inputs(family, side, s)
    extra = diffusers_kwargs(family, inputs)
    y = inputs.get("y")
    name = f"{family.name} {side * 8}px"
    # Each step is a partial over the model, not a lambda: a closure would keep a cell on
    # `ours`/`theirs` (ruff F821 after the `del` below), and the compiled wrapper is
    # dropped too, since it holds `ours` and would keep its weights alive past `free`.
    x, t, context = inputs["x"], inputs["t"], inputs["context"]
    rows = [
        {"case": f"{name} diffusers SDPA",
         "it_s": iterations_per_second(partial(theirs, x, t, context, **extra), s)},
        {"case": f"{name} Easel default",
         "it_s": iterations_per_second(partial(ours, x, t, context, y), s)},
    ]
    if compiled:
        for label, mode in (("compile", "default"), ("CUDA graphs", "reduce-overhead")):
            if mode == "reduce-overhead" and s.device.type != "cuda":
                continue
            fast = torch.compile(ours, mode=mode, backend=s.compile_backend, dynamic=False)
            rows.append({"case": f"{name} Easel {label}",
                         "it_s": iterations_per_second(partial(fast, x, t, context, y), s)})
            del fast
            torch._dynamo.reset()
    del ours, theirs
    free(s)
    return rows


def free(s: Setup) -> None:
    gc.collect()
    if s.device.type == "cuda":
        torch.cuda.empty_cache()


def peak_vram_row(mode_name: str, s: Setup) -> dict:
    """One SD1.5 job's peak device memory in a memory mode (0 on the CPU)."""
    from modules.models.offload import ComponentPlacer, MemoryMode
    from modules.nn.text_encoders import TextEncoder

    family, side = s.families[0], s.sizes[0]
    mode = MemoryMode(mode_name)
    unet, _ = build_unets(family, s.dtype)
    vae, _ = build_vaes(family, s.dtype)
    text = TextEncoder(config=family.text_encoders[0].config).eval().to(s.dtype)
    home = s.device if mode is MemoryMode.NORMAL else torch.device("cpu")
    for module in (unet, vae, text):
        module.to(home)
    placer = ComponentPlacer(components={"unet": unet, "vae": vae, "clip_l": text},
                             device=s.device, mode=mode)
    free(s)
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    inputs = unet_inputs(family, side, s)
    with torch.inference_mode():
        ids = torch.randint(0, 49408, (2, 77), device=s.device)
        context = text(ids).hidden
        x = inputs["x"]
        for _ in range(2):
            x = unet(x, inputs["t"], context)
        vae.decode(x[:1])
    sync(s.device)
    peak = torch.cuda.max_memory_allocated(s.device) if s.device.type == "cuda" else 0
    placer.remove()
    del unet, vae, text
    free(s)
    return {"case": f"{family.name} {side * 8}px peak VRAM {mode_name}",
            "peak_vram_gb": round(peak / 1e9, 3)}


def print_table(rows: list[dict]) -> None:
    print(f"{'case':<48} {'it/s':>8} {'peak VRAM GB':>13}")
    for row in rows:
        speed = f"{row['it_s']:.2f}" if "it_s" in row else ""
        vram = f"{row['peak_vram_gb']:.3f}" if "peak_vram_gb" in row else ""
        print(f"{row['case']:<48} {speed:>8} {vram:>13}")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny models on the CPU: checks the script, measures nothing")
    parser.add_argument("--skip-sdxl", action="store_true")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--flow", choices=("with", "skip", "only"), default="with",
                        help="the SD3.5 Medium / Flux.1 rows (bench/gpu_flow.py): with the "
                             "SD1.5 / SDXL rows, skipped, or alone")
    args = parser.parse_args(argv)
    require_test_extras(__file__, "diffusers")
    s = setup(args.dry_run)
    device_name = torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, device {device_name}, dtype {s.dtype}", flush=True)
    rows = []
    if args.flow != "only":
        rows += speed_rows(s.families[0], s.sizes[0], s, compiled=True)
        if not args.skip_sdxl:
            rows += speed_rows(s.families[1], s.sizes[1], s, compiled=False)
        rows += [peak_vram_row(mode, s) for mode in ("normal", "medvram", "lowvram")]
    if args.flow != "skip":
        rows += flow_rows(s.device, s.dry_run, partial(iterations_per_second, s=s))
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
