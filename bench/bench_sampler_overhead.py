"""Per-step overhead of each sampler: everything except the model call.

A trivial denoiser (D = 0.9 x) on an SD1.5-size latent (2, 4, 64, 64) isolates the cost
of the sampler's own tensor arithmetic, noise draws and bookkeeping. It is printed next
to the cost of one SD1.5 U-Net call on this CPU (about 6-10 s; environment.md section 4),
which the lead replaces with a measured U-Net step when the U-Net exists.

    .venv/bin/python bench/bench_sampler_overhead.py [steps]
"""

from __future__ import annotations

import sys
import time

import torch

from modules.nn.configs import NoiseScheduleConfig
from modules.sampling import registry as R
from modules.sampling.base import run_sampler
from modules.sampling.denoiser import model_sigmas

UNET_STEP_ESTIMATE_S = (6.0, 10.0)


def main(steps: int = 20) -> None:
    table = model_sigmas(NoiseScheduleConfig())
    x0 = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    calls = [0]

    def trivial(x, sigma, **_):
        calls[0] += 1
        return x * 0.9

    trivial.last_uncond = None  # DDIM CFG++ reads the unconditional prediction
    print(f"{'sampler':20s} {'ms/step':>9s} {'model calls':>12s} {'overhead vs U-Net step':>24s}")
    for spec in R.SAMPLERS:
        sigmas = R.compute_sigmas(spec, R.AUTOMATIC, steps, table)
        x = x0 * float(sigmas[0])
        noise = R.default_noise_sampler(spec, x, sigmas, generators=[torch.Generator().manual_seed(s) for s in (1, 2)],
                                        seeds=[1, 2])
        if spec.record_uncond:
            trivial.last_uncond = x0 * 0.9
        calls[0] = 0
        start = time.perf_counter()
        run_sampler(R.start_sampler(spec, trivial, x, sigmas, noise_sampler=noise))
        elapsed_ms = (time.perf_counter() - start) * 1000 / steps
        lo, hi = (elapsed_ms / 1000 / t * 100 for t in reversed(UNET_STEP_ESTIMATE_S))
        print(f"{spec.label:20s} {elapsed_ms:9.2f} {calls[0]:12d} {f'{lo:.3f}% - {hi:.3f}%':>24s}")
    print(f"U-Net step (SD1.5, batch 2, CPU fp32/bf16): ~{UNET_STEP_ESTIMATE_S[0]:.0f}-{UNET_STEP_ESTIMATE_S[1]:.0f} s "
          "(environment.md section 4; not measured here)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
