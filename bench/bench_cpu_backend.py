"""CPU backends: Easel eager and `--cpu-backend openvino` against diffusers and plain OpenVINO.

    PYTHONPATH=. .venv/bin/python bench/bench_cpu_backend.py
        [--parts step,costs,demo,vae,text,int8,image] [--runs 3] [--bf16-reference]
        [--dtypes float32,bfloat16]
        [--steps 20] [--image-size 512] [--image-runs 1] [--image-family sd15|sdxl]
        [--image-dtype float32|bfloat16]

* step: one SD1.5 U-Net CFG step (batch 2, 64x64 latent, 77 tokens), the same random
  weights (diffusers' init mapped to our names) in four engines timed alternately in one
  process: diffusers eager, Easel eager, Easel's OpenVINO backend and plain OpenVINO
  (diffusers' U-Net through `openvino.convert_model`, static shape). fp32 always; bf16
  only on a CPU that computes bf16 natively (elsewhere OpenVINO and oneDNN emulate it, and
  the row would measure the emulation). Medians, ratios to diffusers and to plain
  OpenVINO, and each output's largest difference from diffusers'.
* costs: what the OpenVINO backend costs on first use: converting the template (once per
  architecture and Easel version: cached on disk), reading it back (a new process), compiling
  the checkpoint's weights, the first call at a new latent size (no compile: shapes are
  dynamic), and LoRA sets (runtime inputs): the first one after loading (a rank-16 LoRA on
  every transformer linear: its merge, and its first step, which compiles once with those
  layers as inputs), a steady step with it, a switch to another set of the same layers
  (rank 8: its merge plus whatever its first step takes beyond its second) and back to no
  LoRA, against one step; and how many compiles the three sets took.
  The same step with `--cpu-int8` (the linear layers' weights in int8): its time, and its
  PSNR against the fp32 step and against the same step in bf16 (diffusers' U-Net in bf16;
  on a CPU without native bf16 only with `--bf16-reference`: emulated, many minutes).
* demo: the demo checker's scores (colour, shape, position) on the shipped demo model for
  eager, OpenVINO and OpenVINO with `--cpu-int8` (24 prompts x 4 seeds).
* vae: decoding at 512x512 and 1024x1024, Easel eager against Easel's decoder converted
  by OpenVINO and diffusers (whether the VAE pays to move to OpenVINO too).
* text: one prompt pair (batch 2, 77 tokens) through SD1.5's CLIP-L and SDXL's CLIP-G,
  eager (the transformers module diffusers runs too) against the same module converted by
  OpenVINO (whether they pay to move).
* int8: torch's dynamic int8 quantization against `--cpu-int8` (`bench/cpu_int8.py`).
* image: a whole 20-step DPM++ 2M Karras 512x512 image, CFG 7, then the VAE decode
  (`bench_pipeline.py`'s workers, one fresh process per measurement): Easel with
  `--cpu-backend openvino` against diffusers and against diffusers with a plain OpenVINO
  U-Net. `--image-family sdxl --image-size 1024`: SDXL (random weights in its real
  layout; its size conditioning given to both), Easel against diffusers.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def step_inputs(batch: int = 2, side: int = 64, context_dim: int = 768):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(batch, 4, side, side, generator=generator)
    context = torch.randn(batch, 77, context_dim, generator=generator)
    return x, torch.full((batch,), 500.0), context


def bench_step(ours, theirs, runs: int, dtype: torch.dtype, cache: Path, *,
               bf16_reference: bool = False) -> tuple[dict, object]:
    """Two rounds in one process (RAM holds ~4 copies of the weights, not 5): the four
    engines, then, with plain OpenVINO freed, `--cpu-int8` against the fp32 backend."""
    from bench.openvino_engines import easel_openvino, plain_openvino

    x, t, context = step_inputs()
    ours.to(dtype), theirs.to(dtype)
    fast = easel_openvino(ours, cache)
    engines = {
        "diffusers": lambda: theirs(x.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample,
        "easel_eager": lambda: ours(x, t, context.to(dtype)),
        "easel_openvino": lambda: fast(x, t, context.to(dtype)),
    }
    with torch.inference_mode():
        outputs = {"easel_openvino": engines["easel_openvino"]()}  # converts and compiles first
    held = {"plain": plain_openvino(theirs, x, context, dtype)}  # freed after its round
    theirs.to(dtype)
    engines["plain_openvino"] = lambda: held["plain"](x, t, context).sample
    outputs, medians = alternate(engines, runs)
    del engines["plain_openvino"], held["plain"]
    release_memory()
    held["int8"] = easel_openvino(ours, cache, int8_linears=True)
    engines["easel_openvino_int8"] = lambda: held["int8"](x, t, context.to(dtype))
    int8_outputs, int8_medians = alternate(
        {k: engines[k] for k in ("diffusers", "easel_openvino", "easel_openvino_int8")}, runs)
    outputs["easel_openvino_int8"] = int8_outputs["easel_openvino_int8"]
    row = {"part": "step", "dtype": str(dtype).removeprefix("torch.")}
    for name, seconds in medians.items():
        row[f"{name}_s"] = round(seconds, 3)
        row[f"{name}_vs_diffusers"] = round(seconds / medians["diffusers"], 3)
        row[f"{name}_vs_plain_openvino"] = round(seconds / medians["plain_openvino"], 3)
        row[f"{name}_max_abs_diff"] = float((outputs[name] - outputs["diffusers"]).abs().max())
    row["int8_round"] = {f"{name}_s": round(seconds, 3) for name, seconds in int8_medians.items()}
    row["int8_vs_openvino_fp32"] = round(int8_medians["easel_openvino_int8"]
                                         / int8_medians["easel_openvino"], 3)
    row["first_use"] = {k: round(v, 2) for k, v in fast.backend.timings.items()}
    row["int8_psnr_vs_float32_db"] = round(psnr(outputs["easel_openvino_int8"],
                                                outputs["easel_eager"]), 2)
    del held["int8"], engines
    release_memory()
    if dtype == torch.float32 and (native_bf16() or bf16_reference):  # the reference
        # (Without native bf16, torch's emulated bf16 convolutions take many minutes a step.)
        with torch.inference_mode():  # diffusers' copy: it is not timed again in this process
            bf16 = theirs.to(torch.bfloat16)(x.bfloat16(), t, encoder_hidden_states=(
                context.bfloat16())).sample.float()
        row["bf16_eager_psnr_vs_float32_db"] = round(psnr(bf16, outputs["easel_eager"]), 2)
        row["int8_psnr_vs_bf16_db"] = round(psnr(outputs["easel_openvino_int8"], bf16), 2)
    print(json.dumps(row), flush=True)
    return row, fast


def alternate(engines: dict, runs: int) -> tuple[dict, dict]:
    """Each engine's output (after a warm-up call) and median time, timed in turn."""
    with torch.inference_mode():
        outputs = {name: run().float() for name, run in engines.items()}
        times = {name: [] for name in engines}
        for _ in range(runs):
            for name, run in engines.items():
                times[name].append(timed(run))
    return outputs, {name: statistics.median(found) for name, found in times.items()}


def release_memory() -> None:
    """Hand freed memory back to the system (glibc keeps it otherwise), so that the next
    compile's RAM check sees it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio of `a` against `b`, the peak being `b`'s range."""
    mse = float(((a - b) ** 2).mean())
    peak = float(b.max() - b.min())
    return 10 * math.log10(peak**2 / mse) if mse > 0 else float("inf")


def bench_demo_quality(prompts: int) -> dict:
    """The demo checker's scores (percent of images right) per backend, on the shipped
    demo model: 24 prompts x 4 seeds, DPM++ 2M Karras, 20 steps, CFG 7."""
    from modules.app.cmd_args import parse_args
    from modules.pipeline.params import Txt2ImgParams
    from modules.pipeline.txt2img import txt2img
    from modules.runtime import Runtime
    from modules.training.checker import check
    from modules.training.shapes import evaluation_prompts
    from tests.helpers.checkpoints import finish

    row = {"part": "demo_quality", "prompts": prompts, "seeds": 4}
    for name, flags in (("eager", ["--cpu-backend", "eager"]),
                        ("openvino", ["--cpu-backend", "openvino"]),
                        ("openvino_int8", ["--cpu-backend", "openvino", "--cpu-int8"])):
        with tempfile.TemporaryDirectory() as data:
            runtime = Runtime.create(parse_args([
                "--data-dir", data, "--ckpt-dir", str(ROOT / "models" / "Stable-diffusion"),
                *flags]))
            runtime.ready.set()
            results = []
            for prompt in evaluation_prompts(prompts):
                params = Txt2ImgParams(prompt=prompt, width=64, height=64, steps=20,
                                       cfg_scale=7.0, sampler_name="DPM++ 2M",
                                       scheduler="Karras", seed=0, batch_size=4,
                                       do_not_save_samples=True)
                images = finish(txt2img(runtime, params))[0].images
                results += [check(prompt, image) for image in images]
            runtime.jobs.stop()
        for attribute in ("color", "shape", "position"):
            row[f"{name}_{attribute}_pct"] = round(
                100 * sum(bool(getattr(r, attribute)) for r in results) / len(results), 1)
    print(json.dumps(row), flush=True)
    return row


def lora_weights(unet, rank: int = 16, seed: int = 7) -> dict[str, torch.Tensor]:
    """W + up @ down on every transformer linear: a LoRA set's merged copies."""
    generator = torch.Generator().manual_seed(seed)
    merged = {}
    for name, weight in unet.named_parameters():
        if ".transformer_blocks." in name and name.endswith("weight") and weight.ndim == 2:
            down = torch.randn(rank, weight.shape[1], generator=generator) * 0.01
            up = torch.randn(weight.shape[0], rank, generator=generator) * 0.01
            merged[name] = weight + (up @ down).to(weight.dtype)
    return merged


def bench_costs(ours, fast, step_seconds: float, cache: Path) -> dict:
    """First-use costs, and what a LoRA switch costs: its merge plus whatever its first
    step takes beyond a steady step with LoRA weights (the sets are runtime inputs)."""
    from modules.models.openvino_unet import OpenVINOUNet

    row = {"part": "costs", "step_s": round(step_seconds, 3)}
    row["template_convert_s"] = round(fast.backend.timings.get("template_s", float("nan")), 2)
    row["compile_weight_set_s"] = round(fast.backend.timings.get("compile_s", float("nan")), 2)
    again = OpenVINOUNet(unet=ours, cache_dir=cache)
    row["template_read_s"] = round(timed(again.template), 2)
    x, t, context = step_inputs(side=96, context_dim=ours.config.context_dim)
    context = context.to(ours.dtype)
    with torch.inference_mode():
        row["new_size_first_call_s"] = round(timed(lambda: fast(x, t, context)), 3)
        row["new_size_second_call_s"] = round(timed(lambda: fast(x, t, context)), 3)
        x, t, context = step_inputs(context_dim=ours.config.context_dim)
        context = context.to(ours.dtype)
        compiles = fast.backend.timings.get("compiles", 0)
        # The first LoRA after loading: compiles once with its layers as inputs.
        start = time.perf_counter()
        first = lora_weights(ours)
        row["lora_merge_s"] = round(time.perf_counter() - start, 2)
        row["lora_layers"] = len(first)
        row["lora_first_use_step_s"] = round(timed(lambda: fast.backend(first, x, t, context)), 3)
        row["lora_first_use_compile_s"] = round(fast.backend.timings["compile_s"], 2)
        row["lora_step_s"] = round(timed(lambda: fast.backend(first, x, t, context)), 3)
        # A switch: another LoRA of the same layers (another rank), then back to none.
        start = time.perf_counter()
        second = lora_weights(ours, rank=8, seed=8)
        switch_merge = time.perf_counter() - start
        row["lora_switch_step_s"] = round(timed(lambda: fast.backend(second, x, t, context)), 3)
        row["lora_switch_second_step_s"] = round(
            timed(lambda: fast.backend(second, x, t, context)), 3)
        row["no_lora_after_switch_step_s"] = round(timed(lambda: fast(x, t, context)), 3)
    row["compiles_for_the_three_sets"] = fast.backend.timings["compiles"] - compiles
    row["lora_step_vs_step"] = round(row["lora_step_s"] / step_seconds, 3)
    row["first_lora_vs_step"] = round(
        (row["lora_merge_s"] + row["lora_first_use_step_s"] - row["lora_step_s"]) / step_seconds, 3)
    row["lora_switch_vs_step"] = round(
        (switch_merge + max(0.0, row["lora_switch_step_s"] - row["lora_switch_second_step_s"]))
        / step_seconds, 3)
    print(json.dumps(row), flush=True)
    return row


class _Call(torch.nn.Module):
    """`function(*inputs)` as a module over `owner`'s parameters, for the converter."""

    def __init__(self, owner: torch.nn.Module, function) -> None:
        super().__init__()
        self.owner, self.function = owner, function

    def forward(self, *inputs):
        return self.function(*inputs)


def bench_vae(sizes: list[int], runs: int, dtype: torch.dtype = torch.float32) -> list[dict]:
    """VAE decode: Easel eager, Easel's decoder converted by OpenVINO (dynamic shapes,
    weights baked in) and diffusers, the same weights in `dtype`, alternating."""
    import openvino as ov

    from bench.openvino_engines import precision_hint
    from bench.pipeline_worker import build_vaes
    from modules.models.families import SD15

    ours, theirs = build_vaes(SD15, torch.float32)
    start = time.perf_counter()
    with torch.no_grad():
        model = ov.convert_model(_Call(ours, ours.decode),
                                 example_input=(torch.zeros(1, 4, 32, 32),),
                                 input=[ov.PartialShape([-1, 4, -1, -1])])
    convert_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = ov.Core().compile_model(model, "CPU",
                                       {"INFERENCE_PRECISION_HINT": precision_hint(dtype)})
    compile_s = time.perf_counter() - start
    ours.to(dtype), theirs.to(dtype)
    rows = []
    for size in sizes:
        z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(4))
        engines = {"diffusers": lambda z=z: theirs.decode(z.to(dtype)).sample,
                   "easel_eager": lambda z=z: ours.decode(z.to(dtype)),
                   "easel_openvino": lambda z=z: torch.from_numpy(compiled([z.numpy()])[0].copy())}
        with torch.inference_mode():
            outputs = {name: run() for name, run in engines.items()}
            times = {name: [] for name in engines}
            for _ in range(runs):
                for name, run in engines.items():
                    times[name].append(timed(run))
        medians = {name: statistics.median(found) for name, found in times.items()}
        row = {"part": "vae_decode", "size": size, "dtype": str(dtype).removeprefix("torch."),
               "convert_s": round(convert_s, 1),
               "compile_s": round(compile_s, 1)}
        for name, seconds in medians.items():
            row[f"{name}_s"] = round(seconds, 3)
            row[f"{name}_vs_diffusers"] = round(seconds / medians["diffusers"], 3)
            row[f"{name}_max_abs_diff"] = float((outputs[name] - outputs["diffusers"]).abs().max())
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def bench_text(runs: int) -> list[dict]:
    """Text encoding: the eager module against the same module through OpenVINO."""
    import openvino as ov

    from modules.models.families import CLIP_G, CLIP_L
    from modules.nn.text_encoders import TextEncoder

    ids = torch.randint(1, 49406, (2, 77), generator=torch.Generator().manual_seed(5))
    rows = []
    for name, config in (("clip_l", CLIP_L), ("clip_g", CLIP_G)):
        torch.manual_seed(0)
        encoder = TextEncoder(config=config).eval()
        with torch.no_grad():
            model = ov.convert_model(_Call(encoder, lambda i, e=encoder: e(i).hidden),
                                     example_input=(ids,))
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        engines = {"eager": lambda e=encoder: e(ids).hidden,
                   "openvino": lambda c=compiled: torch.from_numpy(c([ids.numpy()])[0].copy())}
        outputs, medians = alternate(engines, runs)
        row = {"part": "text_encode", "encoder": name, "batch": 2,
               "eager_s": round(medians["eager"], 3), "openvino_s": round(medians["openvino"], 3),
               "openvino_vs_eager": round(medians["openvino"] / medians["eager"], 3),
               "max_abs_diff": float((outputs["openvino"] - outputs["eager"]).abs().max())}
        print(json.dumps(row), flush=True)
        rows.append(row)
        del encoder, model, compiled, engines
        release_memory()
    return rows


def bench_image(args) -> dict:
    """A whole image per engine, one fresh process each (`bench_pipeline.compare`)."""
    from bench.bench_pipeline import compare, measure

    options = {"part": "image", "size": args.image_size, "steps": args.steps,
               "dtype": args.image_dtype, "easel_dtype": None, "tiny": False,
               "family": args.image_family, "cpu_backend": "openvino"}
    # plain OpenVINO converts SD1.5's U-Net only (diffusers' SDXL call takes more inputs).
    engines = ("easel", "diffusers") + (("plain_openvino",) if args.image_family == "sd15"
                                        else ())
    with tempfile.TemporaryDirectory() as folder:
        options["openvino_cache"] = folder
        # The template is converted once per architecture (`costs` times that): a one-step
        # image fills the cache first, so the timed processes' peak RSS is a user's.
        measure({**options, "steps": 1, "engine": "easel"})
        # Warm-up: a 2-step image per process (first calls build kernels; the compiles
        # run before it, untimed).
        return compare({**options, "warmup": True, "warmup_steps": 2}, args.image_runs,
                       engines=engines)


def easel_step(ours, cache: Path, runs: int):
    """Easel's OpenVINO backend for `ours` and the median of `runs` warm steps."""
    from bench.openvino_engines import easel_openvino

    fast = easel_openvino(ours, cache)
    x, t, context = step_inputs(context_dim=ours.config.context_dim)
    context = context.to(ours.dtype)
    with torch.inference_mode():
        fast(x, t, context)  # compiles, builds the kernels
        return fast, statistics.median(timed(lambda: fast(x, t, context)) for _ in range(runs))


def dtypes(args) -> list[torch.dtype]:
    """float32, and bf16 where the CPU computes it natively; `--dtypes` picks among them."""
    found = [torch.float32] + ([torch.bfloat16] if native_bf16() else [])
    return [d for d in found if str(d).removeprefix("torch.") in args.dtypes.split(",")]


def native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", default="step,costs,demo,vae,text,int8,image")
    parser.add_argument("--prompts", type=int, default=24, help="demo-quality prompts")
    parser.add_argument("--vae-sizes", default="512,1024")
    parser.add_argument("--bf16-reference", action="store_true",
                        help="the int8 PSNR against bf16 even without native bf16 (slow)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="of the step, costs and vae parts (bf16 only where native)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--image-family", default="sd15", choices=("sd15", "sdxl"))
    parser.add_argument("--image-dtype", default="float32", choices=("float32", "bfloat16"),
                        help="every engine's weights (bfloat16: what Easel runs by default "
                             "on a CPU with native bf16, and the issue's reference)")
    parser.add_argument("--image-runs", type=int, default=1,
                        help="fresh-process repetitions of each whole image (~4 min each)")
    args = parser.parse_args(argv)
    from bench.extras import require_test_extras

    require_test_extras(__file__, "diffusers")
    parts, rows = args.parts.split(","), []
    if "step" in parts or "costs" in parts:
        from bench.bench_core import build_pair

        ours, theirs = build_pair()
        if not native_bf16():
            print(json.dumps({"part": "step", "dtype": "bfloat16",
                              "skipped": "this CPU has no native bf16"}), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            for dtype in dtypes(args):
                cache = Path(folder) / str(dtype)
                if "step" in parts:
                    row, fast = bench_step(ours, theirs, args.runs, dtype, cache,
                                           bf16_reference=args.bf16_reference)
                    rows.append(row)
                    step_seconds = row["easel_openvino_s"]
                else:  # the costs alone: the step they are compared with, timed here
                    fast, step_seconds = easel_step(ours.to(dtype), cache, args.runs)
                if "costs" in parts:
                    rows.append(bench_costs(ours, fast, step_seconds, cache))
                del fast
                release_memory()
        del ours, theirs
        release_memory()
    if "vae" in parts:
        for dtype in dtypes(args):
            rows += bench_vae([int(size) for size in args.vae_sizes.split(",")], args.runs, dtype)
    if "text" in parts:
        rows += bench_text(args.runs)
    if "int8" in parts:
        from bench.cpu_int8 import bench_int8

        rows.append(bench_int8(args.runs))
    if "demo" in parts:
        rows.append(bench_demo_quality(args.prompts))
    if "image" in parts:
        rows.append(bench_image(args))
    return rows


if __name__ == "__main__":
    main()
