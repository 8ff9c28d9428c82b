"""Tiled Diffusion benchmark: one guided denoising step, tiled against untiled.

    PYTHONPATH=. .venv/bin/python bench/bench_tiled_diffusion.py [--size 2048]
        [--tile 96] [--overlap 48] [--tile-batch 4] [--timeout 600] [--rss-limit-gb 12]
        [--modes tiled,untiled] [--tiny] [--max-unet-calls N]

The full-size SD1.5 U-Net (random weights, channels_last, in the app's CPU precision:
bfloat16 on a CPU with native bf16, as `modules.devices` picks, else float32; `--dtype`
overrides) behind the k-diffusion denoiser and the CFG denoiser: one call at the first sigma
of a 20-step schedule, a batch of 2 rows (cond and uncond) with a 77-token context. The
tiled mode wraps the same CFG denoiser in `modules.sampling.tiled_diffusion.TiledDenoiser`
(the extension's defaults: 96x96 latent tiles overlapping by 48, 4 tiles per U-Net call).

Each mode runs in a fresh process, so its peak resident set (VmHWM) is its own. A mode
that runs past `--timeout` seconds, or whose resident set passes `--rss-limit-gb` (a
watchdog thread ends it before the machine's memory runs out), is reported as failed
with the time and resident set it had reached. The step is timed cold (no warm-up: one
untiled 2048² step is already minutes on a CPU). `--max-unet-calls N` measures memory
only: the step stops after N U-Net calls and the peak resident set after each call is
reported (flat from the first call on: memory bounded by one tile batch), for sizes such
as 4096² whose whole tiled step takes most of an hour on a CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, os, sys, threading, time
sys.path.insert(0, {root!r})
import torch
from bench.bench_tiled_diffusion import StopAfterCalls, build, hwm, rss

options = {options!r}
def watchdog():
    while True:
        time.sleep(0.2)
        if rss() > options["rss_limit_gb"] * 1e9:
            print("RESULT " + json.dumps({{"failed": "resident set over the limit",
                                          "rss_gb": round(rss() / 1e9, 2),
                                          "seconds": round(time.perf_counter() - start, 1)}}),
                  flush=True)
            os._exit(3)
start = time.perf_counter()
threading.Thread(target=watchdog, daemon=True).start()
model, x, sigma, calls = build(options)
model_gb = round(hwm() / 1e9, 3)
start = time.perf_counter()
try:
    with torch.inference_mode():
        out = model(x, sigma)
except StopAfterCalls:
    out = None
seconds = time.perf_counter() - start
row = {{"seconds": round(seconds, 2), "peak_rss_gb": round(hwm() / 1e9, 3),
       "model_rss_gb": model_gb, "unet_calls": len(calls), "largest_unet_input": max(calls),
       "finite": None if out is None else bool(torch.isfinite(out).all())}}
if options["max_unet_calls"]:
    row["stopped_after_calls"] = len(calls)
    row["peak_rss_gb_after_each_call"] = calls.peaks
print("RESULT " + json.dumps(row), flush=True)
"""


class StopAfterCalls(Exception):
    """Raised by `CallLog` after `--max-unet-calls` U-Net calls (a memory-only run)."""


class CallLog(list):
    """The U-Net input shapes, and the peak resident set once each call has returned.

    Appending the next call's shape means the previous call returned, so the peak after
    call i is read then; with `limit` set, the call past the limit stops the step.
    """

    def __init__(self, limit: int = 0) -> None:
        super().__init__()
        self.limit = limit
        self.peaks: list[float] = []

    def append(self, shape) -> None:
        if len(self):
            self.peaks.append(round(hwm() / 1e9, 3))
        if self.limit and len(self) >= self.limit:
            raise StopAfterCalls
        super().append(shape)


def hwm() -> int:
    return _status("VmHWM:")


def rss() -> int:
    return _status("VmRSS:")


def _status(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def build(options: dict):
    """(guided model, x, sigma, list of U-Net input shapes) for one measurement."""
    import torch

    from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
    from modules.models.families import SD15
    from modules.nn.unet import UNetModel
    from modules.sampling import tiled_diffusion as td
    from modules.sampling.cfg import CFGDenoiser
    from modules.sampling.denoiser import Denoiser, model_sigmas

    config = SD15.unet
    if options.get("tiny"):
        from tests.tiny import TINY_SD15

        config = TINY_SD15.unet
    torch.manual_seed(0)
    with torch.device("meta"):
        unet = UNetModel(config=config)
    dtype = getattr(torch, options.get("dtype") or "float32")
    unet = unet.to_empty(device="cpu").to(dtype).eval()
    with torch.no_grad():  # random weights, small enough to keep activations finite
        for parameter in unet.parameters():
            parameter.normal_(0, 0.02)
    unet.set_channels_last(True)
    calls = CallLog(options.get("max_unet_calls", 0))
    denoiser = td.observed(Denoiser(unet, sigmas=model_sigmas(SD15.schedule)), calls)
    g = torch.Generator().manual_seed(1)
    context = torch.randn(2, 77, config.context_dim, generator=g).to(dtype)
    cfg = CFGDenoiser(denoiser, [MultiCond.single(ScheduledCond.constant(Cond(context[0])))],
                      [ScheduledCond.constant(Cond(context[1]))], 7.0, total_steps=20)
    side = options["size"] // 8
    model = cfg
    if options["mode"] == "tiled":
        grid = td.tile_grid(side, side, options["tile"], options["tile"], options["overlap"])
        model = td.TiledDenoiser(cfg, grid, td.MULTIDIFFUSION, options["tile_batch"])
    x = (torch.randn(1, config.in_channels, side, side, generator=g) * 14.6).to(dtype)
    return model, x, torch.full((1,), 14.6), calls


def measure(options: dict, timeout: float) -> dict:
    """One mode in a fresh interpreter; its RESULT line, or why it failed."""
    script = WORKER.format(root=str(ROOT), options=options)
    began = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"failed": f"still running after {timeout:.0f} s (timeout)",
                "seconds": round(time.perf_counter() - began, 1)}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
    if not lines:
        return {"failed": f"exit {done.returncode}: {done.stderr[-500:]}"}
    return json.loads(lines[-1].removeprefix("RESULT "))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048, help="image side (pixels)")
    parser.add_argument("--tile", type=int, default=96, help="latent tile side")
    parser.add_argument("--overlap", type=int, default=48)
    parser.add_argument("--tile-batch", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--rss-limit-gb", type=float, default=12)
    parser.add_argument("--modes", default="tiled,untiled")
    parser.add_argument("--tiny", action="store_true", help="tiny U-Net (seconds; tests)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                        help="default: the app's CPU precision on this machine")
    parser.add_argument("--max-unet-calls", type=int, default=0,
                        help="memory only: stop the step after this many U-Net calls and "
                             "report the peak resident set after each (0: the whole step)")
    args = parser.parse_args(argv)
    rows = []
    if args.dtype is None:
        from modules.devices import cpu_has_native_bf16

        args.dtype = "bfloat16" if cpu_has_native_bf16() else "float32"
    for mode in args.modes.split(","):
        options = {"mode": mode, "size": args.size, "tile": args.tile, "overlap": args.overlap,
                   "tile_batch": args.tile_batch, "rss_limit_gb": args.rss_limit_gb,
                   "tiny": args.tiny, "max_unet_calls": args.max_unet_calls,
                   "dtype": args.dtype}
        row = {**options, **measure(options, args.timeout)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


if __name__ == "__main__":
    main()
