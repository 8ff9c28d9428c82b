"""The benchmark scripts run: the GPU script's CPU dry run, and the pipeline worker's parts.

Timings are not checked (benchmarks are not timed tests); what is checked is that every
code path runs and that Easel and diffusers, holding the same weights, agree.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_gpu_script_dry_run_covers_every_row(capsys):
    from bench import bench_gpu

    rows = bench_gpu.main(["--dry-run"])
    cases = [row["case"] for row in rows]
    assert any("diffusers SDPA" in c for c in cases)
    assert any("Easel default" in c for c in cases)
    assert any("Easel compile" in c for c in cases)
    assert sum("peak VRAM" in c for c in cases) == 3
    assert all(row["it_s"] > 0 for row in rows if "it_s" in row)
    assert "peak VRAM GB" in capsys.readouterr().out


@pytest.mark.parametrize("part", ["vae", "image"])
def test_pipeline_worker_engines_agree_on_tiny_models(part):
    from bench.pipeline_worker import run

    options = {"part": part, "size": 64, "steps": 4, "dtype": "float32", "tiny": True}
    difference = run({**options, "engine": "both"})["max_abs_diff"]
    # Same weights; the VAE is the same function, the image goes through two samplers.
    assert difference < (1e-4 if part == "vae" else 1e-2)
    assert run({**options, "engine": "easel"})["seconds"] > 0


@pytest.mark.parametrize("part", ["vae", "image"])
def test_pipeline_worker_runs_easel_in_its_own_dtype(part):
    from bench.pipeline_worker import run

    options = {"part": part, "size": 64, "steps": 4, "dtype": "float32", "tiny": True}
    same = run({**options, "engine": "both"})["max_abs_diff"]
    mixed = run({**options, "easel_dtype": "bfloat16", "engine": "both"})["max_abs_diff"]
    # bf16 Easel against the fp32 reference: close, and no longer the same function.
    assert same < mixed < 0.25
