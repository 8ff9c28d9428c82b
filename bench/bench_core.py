"""Core-engine benchmark: our SD1.5 U-Net against diffusers', and checkpoint load memory.

    PYTHONPATH=. .venv/bin/python bench/bench_core.py [--runs 3] [--skip-load] [--compile]
        [--dtypes float32,bfloat16]

1. One CFG step (batch 2, 64x64 latent, 77-token context) of the full-size SD1.5
   U-Net, ours and diffusers' `UNet2DConditionModel`, with the same random weights
   (diffusers' init, mapped to our names), in fp32 and bf16. Prints median times and
   the ratio ours / diffusers (target <= 0.8). Ours runs as the app runs it on a CPU
   (channels_last maps, fused q/k/v, in-place activations); with `--compile` it runs
   under torch.compile instead (the app's `--compile` flag; the warm-up call compiles).
2. Peak RSS of loading a full-size SD1.5 fp16 `.safetensors` (written by this script
   with random weights) through Easel's loader into fp16, measured in a fresh process,
   as a multiple of the file size (target <= 1.3).

3. `--defaults`: each engine as it runs out of the box on this CPU: Easel in the dtype its
   precision policy picks for SD1.5 here (`devices.precision_policy`: bf16 on CPUs with
   native bf16, else fp32) against diffusers' default fp32, timed alternately, with the
   output difference between the two.

Both parts run in this one invocation so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_pair():
    """Diffusers' U-Net with its own random init, and ours holding the same tensors."""
    from diffusers import UNet2DConditionModel

    from modules.models.diffusers_keys import unet_diffusers_to_ldm
    from modules.models.families import SD15
    from modules.nn.unet import UNetModel
    from tests.diffusers_configs import unet_diffusers_config

    torch.manual_seed(0)
    theirs = UNet2DConditionModel(**unet_diffusers_config(SD15.unet)).eval()
    with torch.device("meta"):
        ours = UNetModel(config=SD15.unet)
    ours.load_state_dict(unet_diffusers_to_ldm(theirs.state_dict(), SD15.unet), assign=True)
    # As the app runs it on a CPU (modules/devices.py: channels_last is the CPU default).
    ours.set_channels_last(True)
    return ours.eval(), theirs


def time_pair(first, second, runs: int) -> tuple[float, float]:
    """Median seconds of two callables, timed alternately so load drifts hit both."""
    times: tuple[list[float], list[float]] = ([], [])
    with torch.inference_mode():
        first(), second()  # warm-up
        for _ in range(runs):
            for run, bucket in ((first, times[0]), (second, times[1])):
                start = time.perf_counter()
                run()
                bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def bench_unet(runs: int, *, dtypes=(torch.float32, torch.bfloat16),
               compiled: bool = False) -> list[dict]:
    ours, theirs = build_pair()
    rows = []
    for dtype in dtypes:
        ours.to(dtype)
        ours.set_channels_last(True)
        theirs.to(dtype)
        x = torch.randn(2, 4, 64, 64, dtype=dtype)
        t = torch.tensor([500.0, 500.0])
        context = torch.randn(2, 77, 768, dtype=dtype)
        with torch.inference_mode():
            difference = (ours(x, t, context).float()
                          - theirs(x, t, encoder_hidden_states=context).sample.float()).abs().max()
        run_ours = ours
        if compiled:  # the --compile flag: inductor on the CPU (first call compiles, minutes)
            run_ours = torch.compile(ours, dynamic=False)
        mine, reference = time_pair(partial(run_ours, x, t, context),
                                    partial(theirs, x, t, encoder_hidden_states=context), runs)
        rows.append({"dtype": str(dtype).split(".")[-1], "compiled": compiled,
                     "easel_s": round(mine, 3),
                     "diffusers_s": round(reference, 3), "ratio": round(mine / reference, 3),
                     "max_abs_diff": float(difference)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def app_dtype_for_sd15() -> torch.dtype:
    """The dtype the app loads an SD1.5 checkpoint in on this machine, with no flags."""
    from modules import devices
    from modules.app.cmd_args import parse_args
    from modules.models.families import SD15

    return devices.precision_policy(parse_args([]), torch.device("cpu"))(SD15)[0]


def bench_defaults(runs: int) -> dict:
    """Easel in the app's default dtype against diffusers' default fp32, alternately."""
    ours, theirs = build_pair()
    dtype = app_dtype_for_sd15()
    ours.to(dtype)
    ours.set_channels_last(True)
    x = torch.randn(2, 4, 64, 64)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, 768)
    with torch.inference_mode():
        difference = (ours(x.to(dtype), t, context.to(dtype)).float()
                      - theirs(x, t, encoder_hidden_states=context).sample).abs()
        spread = float(theirs(x, t, encoder_hidden_states=context).sample.std())
    mine, reference = time_pair(lambda: ours(x.to(dtype), t, context.to(dtype)),
                                lambda: theirs(x, t, encoder_hidden_states=context), runs)
    row = {"comparison": "defaults", "easel_dtype": str(dtype).split(".")[-1],
           "diffusers_dtype": "float32",
           "easel_s": round(mine, 3), "diffusers_s": round(reference, 3),
           "ratio": round(mine / reference, 3),
           "rms_diff_over_std": round(float(difference.pow(2).mean().sqrt()) / spread, 4)}
    print(json.dumps(row), flush=True)
    return row


def write_sd15_fp16(path: Path) -> int:
    """A full-size SD1.5 checkpoint with random fp16 tensors in the real key layout."""
    from safetensors.torch import save_file

    tensors = {}
    generator = torch.Generator().manual_seed(0)
    for line in (ROOT / "tests/fixtures/sd15_keys.tsv").read_text().splitlines()[1:]:
        key, shape, dtype = line.split("\t")
        dims = json.loads(shape)
        if dtype == "I64":
            tensors[key] = torch.arange(dims[-1]).reshape(dims)
        else:
            tensors[key] = (torch.randn(dims, generator=generator) * 0.02).to(torch.float16)
    save_file(tensors, str(path))
    return path.stat().st_size


# VmHWM (peak resident set) is reset by exec, unlike ru_maxrss, which a child inherits.
LOAD_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from modules.models.loader import inspect_checkpoint, load_state_dict
from modules.models.manager import build_model
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
base = hwm()
header, family = inspect_checkpoint({path!r})
state = load_state_dict({path!r}, dtype=torch.float16)
model = build_model(family, state, path={path!r})
print(base, hwm())
"""


def bench_load() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sd15-fp16.safetensors"
        size = write_sd15_fp16(path)
        script = LOAD_SCRIPT.format(root=str(ROOT), path=str(path))
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             check=True).stdout.split()
        elapsed = time.perf_counter() - start
    base, peak = int(out[-2]), int(out[-1])
    row = {"file_gb": round(size / 1e9, 3), "load_s": round(elapsed, 2),
           "peak_rss_gb": round(peak / 1e9, 3), "extra_rss_gb": round((peak - base) / 1e9, 3),
           "extra_rss_over_file": round((peak - base) / size, 3)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-unet", action="store_true")
    parser.add_argument("--compile", action="store_true",
                        help="time Easel's U-Net under torch.compile (inductor) instead of eager")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--defaults", action="store_true",
                        help="also time each engine in its out-of-the-box dtype on this CPU")
    args = parser.parse_args()
    if not args.skip_unet or args.defaults:
        from bench.extras import require_test_extras

        require_test_extras(__file__, "diffusers")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu {os.cpu_count()}")
    dtypes = tuple(getattr(torch, name) for name in args.dtypes.split(","))
    if not args.skip_unet:
        bench_unet(args.runs, dtypes=dtypes, compiled=args.compile)
    if args.defaults:
        bench_defaults(args.runs)
    if not args.skip_load:
        bench_load()


if __name__ == "__main__":
    main()
