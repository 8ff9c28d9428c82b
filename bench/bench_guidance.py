"""Guidance tools benchmark: the time each one adds to a step, and HyperTile's speed-up.

    PYTHONPATH=. .venv/bin/python bench/bench_guidance.py [--runs 2] [--size 512]
        [--steps 4] [--hypertile-size 1024] [--hypertile-steps 3] [--skip-hypertile]
        [--skip-per-step]

A full-size SD1.5 checkpoint with random fp16 tensors in the real key layout is written
to a temporary data folder and served by an Easel `Runtime` as the app runs it on this
CPU (its precision policy: bf16 on CPUs with native bf16). Each configuration is one
txt2img job (Euler, CFG 7, batch 1, so each step is one U-Net call on a batch of 2)
with one tool on through `alwayson_scripts`, as an API client sends it; "plain" has none.
A step's time is the interval between two consecutive progress events of the job (the
first step, which follows prompt encoding, is not counted); the job is closed after its
last step, so the VAE decode is not timed. Each tool's job runs right after a plain job,
so the pair sees nearly the same load on a shared machine; medians over the runs are
reported, with each tool's added time per step against its plain neighbour.

HyperTile: plain and HyperTile (U-Net, A1111's defaults: max tile 256, swap size 3,
max depth 3) at `--hypertile-size` (1024 x 1024: a 128 x 128 latent), same protocol.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOOLS = {
    "FreeU": {"FreeU Integrated (SD 1.x, SD 2.x, SDXL)": {"args": {"enabled": True}}},
    "SAG": {"SelfAttentionGuidance Integrated (SD 1.x, SD 2.x, SDXL)":
            {"args": {"enabled": True}}},
    "PAG": {"PerturbedAttentionGuidance Integrated": {"args": {"enabled": True}}},
    "Deep Shrink": {"Kohya HRFix Integrated": {"args": {"enabled": True,
                                                        "end_percent": 1.0}}},
    "HyperTile": {"Hypertile": {"args": {"unet": True}}},
    "CFG rescale": {"CFG Rescale": {"args": {"enabled": True, "phi": 0.7}}},
    "Dynamic thresholding": {"DynamicThresholding (CFG-Fix) Integrated":
                             {"args": {"enabled": True}}},
}


def make_runtime(data: Path):
    from bench.bench_core import write_sd15_fp16
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime

    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    write_sd15_fp16(folder / "sd15-random.safetensors")
    runtime = Runtime.create(parse_args(["--data-dir", str(data), "--nowebui"]))
    runtime.ready.set()
    return runtime


def step_times(runtime, scripts: dict, *, size: int, steps: int) -> list[float]:
    """Seconds between consecutive progress events of one job (decode not included)."""
    from modules.jobs import Progress
    from modules.pipeline.params import Txt2ImgParams
    from modules.pipeline.txt2img import txt2img

    params = Txt2ImgParams(prompt="a photograph of a lighthouse", negative_prompt="blurry",
                           width=size, height=size, steps=steps, cfg_scale=7.0, seed=1,
                           sampler_name="Euler", do_not_save_samples=True,
                           alwayson_scripts=scripts)
    job = txt2img(runtime, params)
    stamps: list[float] = []
    try:
        while len(stamps) < steps:
            event = next(job)
            if isinstance(event, Progress):
                stamps.append(time.perf_counter())
    finally:
        job.close()
    return [b - a for a, b in zip(stamps, stamps[1:])]


def compare(runtime, tools: dict[str, dict], *, runs: int, size: int, steps: int) -> dict:
    """Each tool's step time against a plain job run right before it (load on a shared
    machine drifts; adjacent pairs see nearly the same load), medians over the runs."""
    plain: dict[str, list[float]] = {name: [] for name in tools}
    timed: dict[str, list[float]] = {name: [] for name in tools}
    for run in range(runs):
        for name, scripts in tools.items():
            before = step_times(runtime, {}, size=size, steps=steps)
            times = step_times(runtime, scripts, size=size, steps=steps)
            plain[name].extend(before)
            timed[name].extend(times)
            print(f"run {run + 1} plain: {[round(t, 2) for t in before]} "
                  f"{name}: {[round(t, 2) for t in times]}", flush=True)
    report = {}
    for name in tools:
        base, tool = statistics.median(plain[name]), statistics.median(timed[name])
        report[name] = {"plain_step_s": round(base, 2), "step_s": round(tool, 2),
                        "added_s": round(tool - base, 2), "ratio": round(tool / base, 3)}
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--hypertile-size", type=int, default=1024)
    parser.add_argument("--hypertile-steps", type=int, default=3)
    parser.add_argument("--skip-hypertile", action="store_true")
    parser.add_argument("--skip-per-step", action="store_true",
                        help="only HyperTile's comparison at --hypertile-size")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        runtime = make_runtime(Path(folder))
        try:
            report = {}
            if not args.skip_per_step:
                report["per_step"] = compare(runtime, TOOLS, runs=args.runs, size=args.size,
                                             steps=args.steps)
            if not args.skip_hypertile:
                report["hypertile"] = compare(
                    runtime, {"HyperTile": TOOLS["HyperTile"]}, runs=args.runs,
                    size=args.hypertile_size, steps=args.hypertile_steps)
        finally:
            runtime.jobs.stop()
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
