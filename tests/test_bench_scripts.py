"""The benchmark scripts run: the GPU script's CPU dry run, and the pipeline worker's parts.

Timings are not checked (benchmarks are not timed tests); what is checked is that every
code path runs and that Easel and diffusers, holding the same weights, agree.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_gpu_script_dry_run_covers_every_row(capsys):
    from bench import bench_gpu

    rows = bench_gpu.main(["--dry-run"])
    cases = [row["case"] for row in rows]
    assert any("diffusers SDPA" in c for c in cases)
    assert any("Easel default" in c for c in cases)
    assert any("Easel compile" in c for c in cases)
    # SD1.5's three memory modes; SD3.5 Medium bf16 and Flux bf16 / fp8 / Q8_0 in two each.
    assert sum("peak VRAM" in c for c in cases) == 3 + 4 * 2
    for name in ("SD3.5 Medium", "Flux.1 schnell"):
        for engine in ("diffusers bf16", "Easel bf16", "Easel fp8", "Easel Q8_0"):
            assert any(c.startswith(name) and c.endswith(engine) for c in cases), (name, engine)
    assert any(c.startswith("Flux.1 schnell Q8_0") and c.endswith("medvram") for c in cases)
    assert all(row["it_s"] > 0 for row in rows if "it_s" in row)
    assert "peak VRAM GB" in capsys.readouterr().out


def test_gpu_flow_q8_0_blocks_are_ggmls():
    """The GPU rows' in-memory Q8_0 weights: byte for byte gguf's reference quantizer."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    from bench.gpu_flow import q8_0

    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    packed = q8_0(weight)
    expected = quantize(weight.numpy(), GGMLQuantizationType.Q8_0)
    assert (packed.data.numpy().reshape(expected.shape) == expected).all()
    assert (packed.dequantize() - weight).abs().max() <= weight.abs().max() / 127


def test_flow_bench_runs_end_to_end_on_tiny_configs():
    from bench import bench_flow

    rows = bench_flow.main(["--config", "tiny", "--repeats", "1"])
    by_case = {row["case"].split(",")[0]: row for row in rows}
    sd35, t5 = by_case["SD3.5 Medium step"], by_case["T5-XXL encode"]
    flux = next(row for row in rows if row["case"].startswith("Flux.1 schnell step"))
    # Same weights in bf16: the engines differ by rounding only (fp8 storage: more).
    assert sd35["rel_diff"] < 0.05 and flux["rel_diff"] < 0.05
    assert flux["fp8_rel_diff"] < 0.2 and flux["fp8_gb"] < flux["bf16_gb"]
    assert t5["rel_diff"] == 0.0  # the wrapper runs the very same module
    assert all(row[k] > 0 for row in (sd35, flux, t5) for k in row if k.endswith("_s"))
    loads = [row for row in rows if row["case"].startswith("load ")]
    assert len(loads) == 3 + 3 + 2 and all(row["rss_over_file"] > 0 for row in loads)


@pytest.mark.parametrize("part", ["vae", "image"])
def test_pipeline_worker_engines_agree_on_tiny_models(part):
    from bench.pipeline_worker import run

    options = {"part": part, "size": 64, "steps": 4, "dtype": "float32", "tiny": True}
    difference = run({**options, "engine": "both"})["max_abs_diff"]
    # Same weights; the VAE is the same function, the image goes through two samplers.
    assert difference < (1e-4 if part == "vae" else 1e-2)
    assert run({**options, "engine": "easel"})["seconds"] > 0


def test_pipeline_worker_sdxl_images_agree_on_tiny_models(tmp_path):
    """SDXL's size conditioning reaches both engines as the same numbers: one ADM vector
    for Easel, pooled text and time ids for diffusers (a wrong split would differ widely)."""
    from bench.pipeline_worker import run

    options = {"part": "image", "size": 64, "steps": 4, "dtype": "float32", "tiny": True,
               "family": "sdxl"}
    assert run({**options, "engine": "both"})["max_abs_diff"] < 1e-2
    # Another size: other numbers for both, and still the same picture.
    assert run({**options, "size": 48, "engine": "both"})["max_abs_diff"] < 1e-2
    with_openvino = {**options, "cpu_backend": "openvino", "openvino_cache": str(tmp_path)}
    if importlib.util.find_spec("openvino") is not None:
        assert run({**with_openvino, "engine": "both"})["max_abs_diff"] < 1e-2
    with pytest.raises(ValueError, match="SD1.5"):
        run({**options, "engine": "plain_openvino"})


@pytest.mark.parametrize("part", ["vae", "image"])
def test_pipeline_worker_runs_easel_in_its_own_dtype(part):
    from bench.pipeline_worker import run

    options = {"part": part, "size": 64, "steps": 4, "dtype": "float32", "tiny": True}
    same = run({**options, "engine": "both"})["max_abs_diff"]
    mixed = run({**options, "easel_dtype": "bfloat16", "engine": "both"})["max_abs_diff"]
    # bf16 Easel against the fp32 reference: close, and no longer the same function.
    assert same < mixed < 0.25


def test_pipeline_worker_openvino_engines_on_tiny_models(tmp_path):
    pytest.importorskip("openvino")
    from bench.pipeline_worker import run

    options = {"part": "image", "size": 64, "steps": 3, "dtype": "float32", "tiny": True,
               "cpu_backend": "openvino", "openvino_cache": str(tmp_path), "warmup": True,
               "warmup_steps": 1}
    # Easel's OpenVINO U-Net against diffusers: the same picture as eager Easel's.
    assert run({**options, "engine": "both"})["max_abs_diff"] < 1e-2
    outputs = {}
    for engine in ("easel", "plain_openvino", "diffusers"):
        saved = tmp_path / f"{engine}.pt"
        assert run({**options, "engine": engine, "save_to": str(saved)})["seconds"] > 0
        outputs[engine] = torch.load(saved)
    assert (outputs["plain_openvino"] - outputs["diffusers"]).abs().max() < 1e-2
    assert list(tmp_path.glob("unet-*.xml"))  # the template was shared through the folder


def test_cpu_backend_costs_switch_lora_sets_without_compiling_on_a_tiny_unet(tmp_path):
    pytest.importorskip("openvino")
    from bench.bench_cpu_backend import bench_costs, step_inputs
    from bench.openvino_engines import easel_openvino
    from modules.nn.unet import UNetModel
    from tests.tiny import TINY_SD15

    torch.manual_seed(0)
    unet = UNetModel(config=TINY_SD15.unet).eval().requires_grad_(False)
    fast = easel_openvino(unet, tmp_path)
    with torch.inference_mode():
        fast(*step_inputs(side=16, context_dim=unet.config.context_dim))  # the base compile
    row = bench_costs(unet, fast, 1.0, tmp_path)
    # Two LoRA sets of the same layers and no LoRA: one compile, with those layers as inputs.
    assert row["lora_layers"] > 0 and row["compiles_for_the_three_sets"] == 1
    assert row["lora_switch_vs_step"] >= 0 and row["template_read_s"] >= 0


HIDE_AND_RUN = ("import runpy, sys; sys.modules[{module!r}] = None; sys.argv = {argv!r}; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_hiding(module: str, *argv: str):
    """Run a bench script in a fresh interpreter in which `import <module>` fails."""
    code = HIDE_AND_RUN.format(module=module, argv=list(argv))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_a_bench_script_without_the_test_extras_says_so_in_one_line():
    result = run_hiding("diffusers", "bench/bench_core.py", "--skip-load")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("bench_core.py needs the test extras (diffusers missing): ")
    assert "python3 launch.py --run-tests" in lines[0]
    assert "python3 -m modules.app.pyproject test" in lines[0]
    # A part that needs no extra still runs without it.
    result = run_hiding("diffusers", "bench/bench_core.py", "--skip-unet", "--skip-load")
    assert result.returncode == 0 and result.stdout.startswith("torch "), result.stderr


def test_every_bench_script_that_imports_a_test_extra_checks_for_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {re.match(r"[\w.-]+", s).group(0).lower() for s in project["dependencies"]}
    extras = {re.match(r"[\w.-]+", s).group(0).lower()
              for s in project["optional-dependencies"]["test"]} - base - {"pytest", "ruff"}
    needs = re.compile(rf"^\s*(?:import|from) ({'|'.join(extras)})\b|pipeline_worker import",
                       re.M)
    for script in sorted((ROOT / "bench").glob("bench_*.py")):
        if needs.search(script.read_text()):
            assert "require_test_extras(__file__" in script.read_text(), script.name


def test_the_extras_check_names_only_what_is_missing():
    from bench.extras import missing

    assert missing("json", "no_such_module_here", "no.such.package") == [
        "no_such_module_here", "no.such.package"]


def test_adapter_bench_files_are_the_real_full_size_layouts():
    """bench_adapters writes what users have: TencentARC's SD1 full T2I-Adapter, the plain
    SD1.5 IP-Adapter and a ViT-H/14 image encoder (checked from the shapes, no weights)."""
    from bench import bench_adapters
    from modules.models.families import SD15
    from modules.models.ip_adapter_files import clip_vision_config, infer_ip_adapter_config
    from modules.models.t2i_adapter_files import infer_t2i_adapter_config, is_t2i_adapter

    files = bench_adapters.layouts()
    t2i, ip, encoder = files.values()
    assert is_t2i_adapter(t2i)
    config = infer_t2i_adapter_config(t2i, base=SD15.unet)
    assert config.kind == "full" and config.channels == (320, 640, 1280, 1280)
    ip_config = infer_ip_adapter_config(ip, path="ip")
    assert (ip_config.kind, ip_config.image_dim, ip_config.n_tokens) == ("plain", 1024, 4)
    assert len(ip_config.layer_widths) == 16
    vision = clip_vision_config(encoder, {}, path="encoder")
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads,
            vision.projection_dim, vision.patch_size) == (1280, 32, 16, 1024, 14)
    units = bench_adapters.units(64)
    assert units["IP-Adapter"]["controlnet"]["args"][0]["module"] == "ip-adapter_clip_sd15"
