"""Tiled vs untiled VAE decode: peak RSS growth and time, full-size SD VAE, bf16.

    PYTHONPATH=. nice -n 10 .venv/bin/python bench/bench_vae_tiled.py [--size 2048]
        [--untiled-size 2048] [--tile 64] [--overlap 16] [--refine 1]

Each measurement runs in a fresh subprocess: build the SD1/SDXL-size AutoencoderKL
(random weights, bf16), make a random latent, reset the kernel's peak-RSS counter
(`/proc/self/clear_refs`, so building the model does not count), decode, and report
VmHWM minus the RSS just before decoding ("extra RSS") and the wall time. Target:
tiled decode of a 2048x2048 image within 2.5 GB extra RSS. Untiled decode at 2048²
needs about 10 GB (measured: 0.70 GB at 512², 2.59 GB at 1024², growing with the pixel
count) and many minutes on a CPU; `--untiled-size 1024` measures it smaller, and
`--skip-untiled` leaves it out. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(size: int, tiled: bool, tile: int, overlap: int, refine: int) -> dict:
    import torch

    from modules.nn.autoencoder import AutoencoderKL
    from modules.nn.configs import VAEConfig
    from modules.nn.vae_tiled import tiled_decode

    torch.manual_seed(0)
    vae = AutoencoderKL(config=VAEConfig()).to(torch.bfloat16).eval().requires_grad_(False)
    z = torch.randn(1, 4, size // 8, size // 8, dtype=torch.bfloat16)
    Path("/proc/self/clear_refs").write_text("5")
    before = _status("VmRSS")
    start = time.perf_counter()
    with torch.inference_mode():
        if tiled:
            image = tiled_decode(vae, z, tile=tile, overlap=overlap, refine=refine)
        else:
            image = vae.decode(z)
    seconds = time.perf_counter() - start
    assert image.shape == (1, 3, size, size)
    import resource

    return {"size": size, "tiled": tiled, "seconds": round(seconds, 1),
            "extra_rss_mb": round((_status("VmHWM") - before) / 2**20),
            "rss_before_mb": round(before / 2**20),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--untiled-size", type=int, default=2048)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--refine", type=int, default=1)
    parser.add_argument("--skip-untiled", action="store_true")
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--tiled", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.size, args.tiled, args.tile, args.overlap, args.refine)))
        return
    common = ["--tile", str(args.tile), "--overlap", str(args.overlap),
              "--refine", str(args.refine)]
    results = [run_child(["--size", str(args.size), "--tiled", *common])]
    print(json.dumps(results[-1]), flush=True)
    if not args.skip_untiled:
        results.append(run_child(["--size", str(args.untiled_size), *common]))
        print(json.dumps(results[-1]), flush=True)
    tiled = results[0]
    verdict = "OK" if tiled["extra_rss_mb"] <= 2500 else "OVER"
    print(f"tiled {tiled['size']}²: {tiled['extra_rss_mb']} MB extra RSS (target <= 2500: "
          f"{verdict}), {tiled['seconds']} s")


if __name__ == "__main__":
    main()
