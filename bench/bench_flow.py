"""SD3.5 / Flux.1 benchmark on the CPU: Easel against diffusers, same weights, same dtype,
same run; and the peak memory of loading each family against its file size (issue 18).

    PYTHONPATH=. .venv/bin/python bench/bench_flow.py [--repeats 3] [--parts sd35,flux,t5,load]
    PYTHONPATH=. .venv/bin/python bench/bench_flow.py --config tiny   # seconds: checks the script

Parts (each in its own subprocess with `--config full`, so that one part's weights are
gone before the next is built; each checks the memory available first):

* sd35: one CFG step (batch 2) of the full-size SD3.5 Medium MMDiT (2.47 B weights) in
  bf16 at 256x256 (32x32 latent; 77 + 256 text tokens), our `MMDiT` against diffusers'
  `SD3Transformer2DModel` holding the same tensors (`bench/flow_pairs.py`).
* flux: one Flux.1 [schnell] step (batch 1, no CFG) at 256x256 (16x16 = 256 image tokens,
  256 T5 tokens) in bf16. Full size is 11.9 B weights, 24 GB in bf16, which cannot be held
  twice in 24 GB: the model measured is full width (hidden 3072, 24 heads, released input
  widths) with 2 double + 4 single blocks instead of 19 + 38 (1.3 B weights), so every
  block does the full model's work. Easel in float8 e4m3fn storage with bf16 compute
  (`modules.nn.lowbit.to_low_bit`) is timed on the same weights as a third engine.
* t5: one T5-XXL encode of 256 tokens in bf16 (4.7 B weights, 9.5 GB): our `T5TextEncoder`
  against the plain transformers `T5EncoderModel` it wraps (the same module), to show the
  wrapper adds nothing.
* load: files of reduced models (SD3.5 Medium layout at depth 12, head width 64; Flux at
  full width with 1 double + 1 single block) written as bf16 safetensors, float8 e4m3fn
  safetensors (layer weights float8, the rest bf16) and GGUF Q8_0 (layer weights Q8_0,
  the rest F16 / F32), each loaded in a fresh process through
  `modules.models.lowbit_load.load_diffusion_weights` (the app's low-bit loading path,
  "Automatic": the file's storage kept); and a T5 at XXL width with 2 layers written in
  fp16 and in float8 e4m3fn (matrices; embedding and position table fp16), as users'
  `t5xxl_fp16` / `t5xxl_fp8_e4m3fn` files, loaded the app's way for a separate text
  encoder (meta build, `flow_loader.Source.read` casting to bf16, `load_weights`).
  Reported: peak resident set above the post-import baseline (VmHWM - VmRSS) / file size.

Timings alternate the engines within each repeat and report medians; the first call of
each engine (the output comparison) is the warm-up.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

from bench import flow_pairs as pairs  # noqa: E402

DTYPE = torch.bfloat16
# (latent side, SD3 text tokens, Flux / T5 text tokens) per config.
SIZES = {"full": (32, 77 + 256, 256), "tiny": (8, 7, 5)}
# GB of available memory each part needs at full size (weights, copies and activations).
NEEDS_GB = {"sd35": 8, "flux": 10, "t5": 12, "load": 5}
PARTS = tuple(NEEDS_GB)


def time_alternating(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls run in turn in each repeat."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    with torch.inference_mode():
        for _ in range(repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    return {name: round(statistics.median(values), 3) for name, values in times.items()}


def emit(row: dict) -> dict:
    print(json.dumps(row), flush=True)
    return row


def bench_sd35(size: str, repeats: int) -> list[dict]:
    config = pairs.sd35_config(size)
    ours, theirs = pairs.sd35_pair(config, DTYPE)
    side, tokens, _ = SIZES[size]
    inputs = pairs.sd35_inputs(config, side, tokens, DTYPE)
    reference = pairs.sd35_diffusers_call(theirs, inputs)
    with torch.inference_mode():
        difference = pairs.relative_difference(ours(**inputs), reference())
    seconds = time_alternating({"easel": partial(ours, **inputs), "diffusers": reference},
                               repeats)
    return [emit({"case": f"SD3.5 Medium step, batch 2, {side * 8}px, {tokens} tokens",
                  "dtype": "bfloat16", **{f"{k}_s": v for k, v in seconds.items()},
                  "ratio": round(seconds["easel"] / seconds["diffusers"], 3),
                  "rel_diff": difference})]


def bench_flux(size: str, repeats: int) -> list[dict]:
    from modules.nn.lowbit import storage_bytes, to_low_bit

    config = pairs.flux_config("tiny" if size == "tiny" else "reduced")
    ours, theirs, state = pairs.flux_pair(config, DTYPE)
    fp8 = to_low_bit(pairs.flux_ours(config, state), "float8_e4m3fn", compute_dtype=DTYPE)
    side, _, tokens = SIZES[size]
    inputs = pairs.flux_inputs(config, side, tokens, DTYPE)
    reference = pairs.flux_diffusers_call(theirs, inputs)
    with torch.inference_mode():
        expected = reference()
        difference = pairs.relative_difference(ours(**inputs), expected)
        fp8_difference = pairs.relative_difference(fp8(**inputs), expected)
    seconds = time_alternating({"easel": partial(ours, **inputs), "diffusers": reference,
                                "easel_fp8": partial(fp8, **inputs)}, repeats)
    blocks = f"{config.depth} double + {config.depth_single_blocks} single blocks"
    return [emit({"case": f"Flux.1 schnell step ({blocks}), batch 1, {side * 8}px, "
                          f"{tokens} tokens", "dtype": "bfloat16 (fp8: float8 storage)",
                  **{f"{k}_s": v for k, v in seconds.items()},
                  "ratio": round(seconds["easel"] / seconds["diffusers"], 3),
                  "fp8_ratio": round(seconds["easel_fp8"] / seconds["diffusers"], 3),
                  "rel_diff": difference, "fp8_rel_diff": fp8_difference,
                  "bf16_gb": round(storage_bytes(ours) / 1e9, 3),
                  "fp8_gb": round(storage_bytes(fp8) / 1e9, 3)})]


def bench_t5(size: str, repeats: int) -> list[dict]:
    encoder = pairs.t5_encoder(pairs.t5_config(size), DTYPE)
    _, _, tokens = SIZES[size]
    ids = torch.randint(0, encoder.config.vocab_size, (1, tokens),
                        generator=torch.Generator().manual_seed(3))
    plain = encoder.transformer

    def transformers_encode() -> torch.Tensor:
        return plain(input_ids=ids).last_hidden_state

    with torch.inference_mode():
        difference = pairs.relative_difference(encoder(ids), transformers_encode())
    seconds = time_alternating({"easel": partial(encoder, ids),
                                "transformers": transformers_encode}, repeats)
    return [emit({"case": f"T5-XXL encode, {tokens} tokens", "dtype": "bfloat16",
                  **{f"{k}_s": v for k, v in seconds.items()},
                  "ratio": round(seconds["easel"] / seconds["transformers"], 3),
                  "rel_diff": difference})]


def load_config(family: str, size: str):
    if family == "sd35":
        if size == "tiny":
            return pairs.sd35_config("tiny")
        return dataclasses.replace(pairs.SD35_MEDIUM, depth=12,
                                   x_block_self_attn_layers=tuple(range(6)))
    if size == "tiny":
        return pairs.flux_config("tiny")
    return dataclasses.replace(pairs.FLUX_SCHNELL, depth=1, depth_single_blocks=1)


def load_label(family: str, size: str) -> str:
    if family == "t5":
        return f"T5-XXL width, {t5_load_config(size).num_layers} layers"
    config = load_config(family, size)
    if family == "sd35":
        return f"SD3.5 Medium layout, depth {config.depth}"
    return f"Flux.1, {config.depth} double + {config.depth_single_blocks} single blocks"


def build_meta(family: str, size: str) -> torch.nn.Module:
    config = load_config(family, size)
    with torch.device("meta"):
        if family == "sd35":
            return pairs.MMDiT(config=config)
        return pairs.FluxTransformer(config=config)


def write_files(family: str, size: str, folder: Path) -> dict[str, Path]:
    """The reduced model's random weights as bf16 / float8 safetensors and GGUF Q8_0."""
    from gguf import GGMLQuantizationType, GGUFWriter
    from gguf.quants import quantize
    from safetensors.torch import save_file

    from modules.models.lowbit_load import layer_weight_names

    model = build_meta(family, size)
    layers = layer_weight_names(model)
    state = pairs.random_state(pairs.shapes_of(model), DTYPE)
    paths = {name: folder / f"{family}-{name}" for name in
             ("bf16.safetensors", "fp8.safetensors", "Q8_0.gguf")}
    save_file(state, str(paths["bf16.safetensors"]))
    save_file({k: v.to(torch.float8_e4m3fn) if k in layers else v for k, v in state.items()},
              str(paths["fp8.safetensors"]))
    writer = GGUFWriter(str(paths["Q8_0.gguf"]), "sd3" if family == "sd35" else "flux")
    q8 = GGMLQuantizationType.Q8_0
    for key, value in state.items():
        array = value.float().numpy()
        if key in layers and array.ndim > 1 and array[0].size % 32 == 0:
            packed = quantize(array.reshape(array.shape[0], -1), q8)
            writer.add_tensor(key, packed, raw_shape=packed.shape, raw_dtype=q8)
        else:  # as city96's files: norms and biases F32, other tensors F16
            writer.add_tensor(key, array.astype("float32" if array.ndim == 1 else "float16"))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return paths


def status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    raise KeyError(key)


def t5_load_config(size: str):
    return pairs.TINY_T5 if size == "tiny" else dataclasses.replace(pairs.T5_XXL, num_layers=2)


def write_t5_files(size: str, folder: Path) -> dict[str, Path]:
    """A reduced T5 as the files users keep: fp16, and float8 e4m3fn matrices (the
    embedding and the relative position table fp16)."""
    from safetensors.torch import save_file

    with torch.device("meta"):
        encoder = pairs.T5TextEncoder(config=t5_load_config(size))
    shapes = pairs.shapes_of(encoder.transformer)
    shapes.pop("encoder.embed_tokens.weight")
    state = pairs.random_state(shapes, torch.float16)
    paths = {name: folder / f"t5-{name}" for name in ("fp16.safetensors", "fp8.safetensors")}
    save_file(state, str(paths["fp16.safetensors"]))
    save_file({k: v.to(torch.float8_e4m3fn) if v.ndim == 2 and "shared" not in k
               and "relative" not in k else v for k, v in state.items()},
              str(paths["fp8.safetensors"]))
    return paths


def load_t5(size: str, path: str) -> torch.nn.Module:
    """The app's path for a separate T5 file (`flow_model.assemble_flow_model`): meta
    build, `Source.read` casting to the compute dtype, `load_weights` by assignment."""
    from modules.models.flow_loader import Source
    from modules.models.safetensors_io import read_safetensors_header

    with torch.device("meta"):
        encoder = pairs.T5TextEncoder(config=t5_load_config(size))
    source = Source(path=path, keys=tuple(read_safetensors_header(path).tensors))
    missing = encoder.load_weights(source.read(dtype=DTYPE, device="cpu"))
    assert not missing, missing
    return encoder


def load_child(family: str, size: str, path: str) -> None:
    """In a fresh process: build on meta, load the file, print the peak memory above the
    post-import baseline and the bytes the model holds."""
    # load_t5's imports (T5TextEncoder imports transformers' model when built), done before
    # the baseline like every other import.
    from transformers import T5EncoderModel  # noqa: F401

    import modules.models.flow_loader  # noqa: F401
    from modules.models.lowbit_load import load_diffusion_weights
    from modules.nn.lowbit import storage_bytes

    base = status_kib("VmRSS:")
    start = time.perf_counter()
    if family == "t5":
        model = load_t5(size, path)
    else:
        model = build_meta(family, size)
        report = load_diffusion_weights(model, path, compute_dtype=DTYPE)
        assert not report.missing and not report.unexpected, report
    pairs.assert_materialised(model)
    print(json.dumps({"extra_kib": status_kib("VmHWM:") - base, "held": storage_bytes(model),
                      "seconds": time.perf_counter() - start}))


def bench_load(size: str) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in ("sd35", "flux", "t5"):
            files = write_t5_files(size, Path(tmp)) if family == "t5" else \
                write_files(family, size, Path(tmp))
            for name, path in files.items():
                out = subprocess.run(
                    [sys.executable, __file__, "--load-child", family, "--config", size,
                     "--file", str(path)], capture_output=True, text=True, check=True)
                child = json.loads(out.stdout.strip().splitlines()[-1])
                file_bytes = path.stat().st_size
                rows.append(emit({
                    "case": f"load {load_label(family, size)} {name}",
                    "file_mb": round(file_bytes / 1e6, 1),
                    "held_mb": round(child["held"] / 1e6, 1),
                    "extra_rss_mb": round(child["extra_kib"] * 1024 / 1e6, 1),
                    "rss_over_file": round(child["extra_kib"] * 1024 / file_bytes, 3),
                    "load_s": round(child["seconds"], 2)}))
                path.unlink()
    return rows


BENCHES = {"sd35": bench_sd35, "flux": bench_flux, "t5": bench_t5}


def run_part(part: str, size: str, repeats: int) -> list[dict]:
    if part == "load":
        return bench_load(size)
    return BENCHES[part](size, repeats)


def available_gb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024 / 1024
    return 0.0


def run_isolated(part: str, size: str, repeats: int) -> list[dict]:
    """One part in a fresh interpreter (full size), after checking the free memory."""
    free = available_gb()
    if free < NEEDS_GB[part]:
        return [emit({"case": part, "skipped": f"{free:.1f} GB available, "
                                               f"{NEEDS_GB[part]} GB needed"})]
    print(f"# {part}: {free:.1f} GB available", flush=True)
    out = subprocess.run([sys.executable, __file__, "--part", part, "--config", size,
                          "--repeats", str(repeats)], capture_output=True, text=True)
    if out.returncode:
        return [emit({"case": part, "failed": out.stderr.strip().splitlines()[-1:]})]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    for row in rows:
        emit(row)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("full", "tiny"), default="full")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--load-child", choices=("sd35", "flux", "t5"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load_child:
        load_child(args.load_child, args.config, args.file)
        return []
    if args.part:
        return run_part(args.part, args.config, args.repeats)
    from bench.extras import require_test_extras

    require_test_extras(__file__, "diffusers")
    print(f"# torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"config {args.config}", flush=True)
    rows = []
    for part in args.parts.split(","):
        if args.config == "tiny":  # seconds each: one process is enough
            rows += run_part(part, args.config, args.repeats)
        else:
            rows += run_isolated(part, args.config, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
