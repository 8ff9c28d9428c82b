"""Per-step overhead of each sampler: everything except the model call.

A trivial denoiser (D = 0.9 x) on an SD1.5-size latent (2, 4, 64, 64) isolates the cost
of the sampler's own tensor arithmetic, noise draws and bookkeeping. It is printed as a
share of one SD1.5-size U-Net call (batch 2, 64x64 latent, fp32) measured in the same run.

    PYTHONPATH=. .venv/bin/python bench/bench_sampler_overhead.py [steps]
"""

from __future__ import annotations

import sys
import time

import torch

from modules.nn.configs import NoiseScheduleConfig
from modules.sampling import registry as R
from modules.sampling.base import run_sampler
from modules.sampling.denoiser import model_sigmas


def unet_step_seconds() -> float:
    """One SD1.5-size U-Net call (batch 2, 64x64, 77 tokens) on random weights, fp32."""
    from modules.models.families import SD15
    from modules.nn.unet import UNetModel

    with torch.device("meta"):
        unet = UNetModel(config=SD15.unet)
    unet.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.normal_(0, 0.02)
    x, t, context = torch.randn(2, 4, 64, 64), torch.tensor([500.0] * 2), torch.randn(2, 77, 768)
    with torch.inference_mode():
        unet(x, t, context)  # warm-up
        start = time.perf_counter()
        unet(x, t, context)
    return time.perf_counter() - start


def main(steps: int = 20) -> None:
    unet_s = unet_step_seconds()
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
        generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
        noise = R.default_noise_sampler(spec, x, sigmas, generators=generators, seeds=[1, 2])
        if spec.record_uncond:
            trivial.last_uncond = x0 * 0.9
        calls[0] = 0
        start = time.perf_counter()
        run_sampler(R.start_sampler(spec, trivial, x, sigmas, noise_sampler=noise))
        elapsed_ms = (time.perf_counter() - start) * 1000 / steps
        share = elapsed_ms / 1000 / unet_s * 100
        print(f"{spec.label:20s} {elapsed_ms:9.2f} {calls[0]:12d} {f'{share:.3f}%':>24s}")
    print(f"U-Net step (SD1.5 size, batch 2, 64x64, CPU fp32), measured: {unet_s:.2f} s")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
