"""Whole-image and VAE-decode benchmark: Easel against diffusers, with peak RSS of each.

    PYTHONPATH=. .venv/bin/python bench/bench_pipeline.py [--runs 3] [--parts vae,image]
        [--sizes 512,1024] [--steps 20] [--dtype float32] [--easel-dtype bfloat16] [--tiny]

Every measurement runs in a fresh process (so its peak resident set, VmHWM, belongs to
that measurement alone), and the processes alternate Easel / diffusers repetition by
repetition, so load drifts on a shared machine hit both; medians are reported. Each
process makes one untimed warm-up call first (`--cold` times the first call instead).

* vae: decode one SD latent to a W x W image (SD1.5 VAE, diffusers' random init mapped
  to our names: both hold the same weights).
* image: a whole W x W txt2img image: 20 DPM++ 2M Karras steps with CFG (the U-Net on
  a batch of 2 per step), then the VAE decode. Easel runs its own U-Net, denoiser,
  sampler and VAE as the app configures them on a CPU (channels_last); diffusers runs
  `UNet2DConditionModel` + `DPMSolverMultistepScheduler` (Karras sigmas) + `AutoencoderKL`.
  The text encoder is left out of both (the same transformers class, < 0.1 % of the time);
  the context is a fixed random (2, 77, 768) tensor.
* `--easel-dtype` runs Easel in another dtype than the reference (`--dtype`): the app's
  default on a CPU with native bf16 is bf16 for full-size models, diffusers' is fp32.
* `--tiny` uses the test suite's scaled-down configs (seconds; used by the tests).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

WORKER = r"""
import json, sys, time, torch
sys.path.insert(0, {root!r})
from bench.pipeline_worker import run
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
result = run({options!r})
result["peak_rss_gb"] = round(hwm() / 1e9, 3)
print("RESULT " + json.dumps(result))
"""


def measure(options: dict) -> dict:
    """One measurement in a fresh interpreter; returns its timing and peak RSS."""
    script = WORKER.format(root=str(ROOT), options=options)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"worker failed for {options}:\n{done.stderr[-3000:]}")
    line = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line.removeprefix("RESULT "))


def compare(options: dict, runs: int, engines: tuple[str, ...] = ("easel", "diffusers")) -> dict:
    """Alternate the engines `runs` times; medians of seconds and peak RSS, each engine's
    time as a ratio of diffusers', and its output's largest difference from diffusers'."""
    import torch

    results: dict[str, list[dict]] = {engine: [] for engine in engines}
    with tempfile.TemporaryDirectory() as folder:
        saved = {engine: str(Path(folder) / f"{engine}.pt") for engine in results}
        for run in range(runs):
            for engine in results:
                keep = {"save_to": saved[engine]} if run == 0 else {}
                results[engine].append(measure({**options, "engine": engine, **keep}))
        outputs = {engine: torch.load(saved[engine]) for engine in results}
    row = dict(options)
    for engine, found in results.items():
        row[f"{engine}_s"] = round(statistics.median(r["seconds"] for r in found), 3)
        row[f"{engine}_peak_rss_gb"] = round(statistics.median(r["peak_rss_gb"] for r in found), 3)
    row["ratio"] = round(row["easel_s"] / row["diffusers_s"], 3)
    # Same weights, same inputs: how far apart the engines' outputs are.
    row["max_abs_diff"] = float((outputs["easel"] - outputs["diffusers"]).abs().max())
    for engine in engines[2:]:
        row[f"{engine}_ratio"] = round(row[f"{engine}_s"] / row["diffusers_s"], 3)
        row[f"easel_vs_{engine}"] = round(row["easel_s"] / row[f"{engine}_s"], 3)
        row[f"{engine}_max_abs_diff"] = float((outputs[engine] - outputs["diffusers"]).abs().max())
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parts", default="vae,image")
    parser.add_argument("--sizes", default="512,1024", help="VAE decode sizes (pixels)")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--easel-dtype", choices=("float32", "bfloat16"),
                        help="Easel's dtype when it differs from the reference's (--dtype)")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cold", action="store_true",
                        help="time the first call (default: one untimed warm-up call first)")
    args = parser.parse_args(argv)
    from bench.extras import require_test_extras

    require_test_extras(__file__, "diffusers")  # the workers build diffusers' models
    rows = []
    parts = args.parts.split(",")
    common = {"dtype": args.dtype, "easel_dtype": args.easel_dtype, "tiny": args.tiny,
              "warmup": not args.cold}
    if "vae" in parts:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(compare({**common, "part": "vae", "size": size}, args.runs))
    if "image" in parts:
        rows.append(compare({**common, "part": "image", "size": args.image_size,
                             "steps": args.steps}, args.runs))
    return rows


if __name__ == "__main__":
    main()
