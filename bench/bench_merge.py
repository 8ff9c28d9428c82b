"""Peak memory of a checkpoint merge: Easel's streamed merge against loading whole files.

Writes two float32 checkpoints (`--tensors` U-Net-named weights of `--side`² floats each;
defaults: 48 x 1024² = 192 MiB per file), then in a fresh process each, merges them with
a weighted sum:

- reference: `safetensors.torch.load_file` of A and B, the formula over dicts, `save_file`
  (what a merger that holds whole models does);
- Easel: `modules.models.merge.run_merge` (tensor by tensor, header first).

Prints the extra peak resident set above the post-import baseline (VmHWM), as a multiple of
one input file, and checks both outputs are equal. Run:
`.venv/bin/python bench/bench_merge.py [--tensors N] [--side N]`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys, time
sys.path.insert(0, {root!r})
import torch
from safetensors.torch import load_file, save_file

def peak_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

data = {data!r}
if {mode!r} == "easel":
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime
    from modules.models.merge import MergeParams, run_merge
    runtime = Runtime.create(parse_args(["--data-dir", data, "--no-hashing"]))
base = rss_kib()
started = time.perf_counter()
folder = data + "/models/Stable-diffusion/"
if {mode!r} == "easel":
    run_merge(runtime, MergeParams(primary_model_name="a", secondary_model_name="b",
                                   multiplier=0.3, custom_name="easel", add_merge_recipe=False))
else:
    a, b = load_file(folder + "a.safetensors"), load_file(folder + "b.safetensors")
    out = {{k: a[k] * (1 - 0.3) + b[k] * 0.3 for k in a}}
    save_file(out, folder + "whole.safetensors")
print(json.dumps({{"extra_kib": peak_kib() - base, "seconds": time.perf_counter() - started}}))
"""


def write_inputs(data: Path, tensors: int, side: int) -> int:
    import torch
    from safetensors.torch import save_file

    folder = data / "models" / "Stable-diffusion"
    folder.mkdir(parents=True)
    for seed, name in enumerate("ab"):
        generator = torch.Generator().manual_seed(seed)
        state = {f"model.diffusion_model.input_blocks.{i}.0.weight":
                 torch.randn(side, side, generator=generator) for i in range(tensors)}
        save_file(state, str(folder / f"{name}.safetensors"))
    return (folder / "a.safetensors").stat().st_size


def run_child(mode: str, data: Path) -> dict:
    code = CHILD.format(root=str(ROOT), data=str(data), mode=mode)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tensors", type=int, default=48)
    parser.add_argument("--side", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        size = write_inputs(data, args.tensors, args.side)
        results = {mode: run_child(mode, data) for mode in ("whole files", "easel")}
        import torch
        from safetensors.torch import load_file

        out = data / "models" / "Stable-diffusion"
        whole = load_file(str(out / "whole.safetensors"))
        easel = load_file(str(out / "easel.safetensors"))
        equal = all(torch.equal(whole[k], easel[k]) for k in whole)
    print(f"input file: {size / 2**20:.0f} MiB x 2; outputs equal: {equal}")
    print(f"{'':14} {'extra peak MiB':>15} {'x one file':>11} {'seconds':>8}")
    for mode, result in results.items():
        extra = result["extra_kib"] * 1024
        print(f"{mode:14} {extra / 2**20:15.0f} {extra / size:11.2f} {result['seconds']:8.1f}")


if __name__ == "__main__":
    main()
