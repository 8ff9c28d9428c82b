"""Peak memory of loading a diffusion model stored in low bits, against the file's size.

Writes one MMDiT (depth `--depth`, head width 64: `--depth 12` is 255 M weights) in
three files: float8 e4m3fn safetensors (layer weights float8, the rest bf16, as Flux /
SD3.5 fp8 files are), GGUF Q8_0 and GGUF Q4_K (layer weights quantized, the rest F32,
as city96's files are). Then, in a fresh process each, builds the model on the meta
device and loads a file with `modules.models.lowbit_load.load_diffusion_weights`
("Automatic": the file's storage kept), and as a reference reads the float8 file the
dense way (every floating tensor cast to bf16 as it is read, `safetensors_io`).

Prints the extra peak resident set above the post-import baseline (VmHWM) as a multiple
of the file size, the model's bytes in memory, and the load time. Run:
`.venv/bin/python bench/bench_lowbit_load.py [--depth N] [--keep DIR]`.
"""

from __future__ import annotations

import argparse
import dataclasses
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
import dataclasses, torch
from modules.nn.mmdit import SD3_MEDIUM, MMDiT
from modules.nn.lowbit import storage_bytes
from modules.models.lowbit_load import load_diffusion_weights
from modules.models.safetensors_io import load_safetensors

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

config = dataclasses.replace(SD3_MEDIUM, depth={depth})
base = status("VmRSS:")
started = time.perf_counter()
if {mode!r} == "dense":
    state = load_safetensors({path!r}, dtype=torch.bfloat16)
    held = sum(t.numel() * t.element_size() for t in state.values())
else:
    with torch.device("meta"):
        model = MMDiT(config=config)
    report = load_diffusion_weights(model, {path!r}, compute_dtype=torch.bfloat16)
    assert not report.missing and not report.unexpected, report
    held = storage_bytes(model)
seconds = time.perf_counter() - started
print(json.dumps({{"extra_kib": status("VmHWM:") - base, "held": held, "seconds": seconds}}))
"""


def write_files(folder: Path, depth: int) -> dict[str, Path]:
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFWriter
    from safetensors.torch import save_file

    from modules.models.lowbit_load import layer_weight_names
    from modules.nn.mmdit import SD3_MEDIUM, MMDiT
    from tests.gguf_kquants import quantize

    with torch.device("meta"):
        model = MMDiT(config=dataclasses.replace(SD3_MEDIUM, depth=depth))
    weights = layer_weight_names(model)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    fp8 = {}
    writers = {qt: GGUFWriter(str(folder / f"mmdit-{qt.name}.gguf"), "sd3")
               for qt in (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_K)}
    for key, shape in shapes.items():
        value = torch.randn(shape, generator=generator) * 0.05
        rows = value.reshape(shape[0], -1).numpy() if len(shape) > 1 else value.numpy()
        is_layer = key in weights
        fp8[key] = value.to(torch.float8_e4m3fn if is_layer else torch.bfloat16)
        for qtype, writer in writers.items():
            if is_layer and rows.ndim == 2 and rows.shape[1] % 256 == 0:
                packed = quantize(np.ascontiguousarray(rows), qtype)
                writer.add_tensor(key, packed, raw_shape=packed.shape, raw_dtype=qtype)
            else:  # city96's files keep these 16-bit (norms and biases: F32)
                writer.add_tensor(key, value.numpy().astype(
                    np.float32 if len(shape) == 1 else np.float16))
    save_file(fp8, str(folder / "mmdit-fp8.safetensors"))
    for writer in writers.values():
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"float8 e4m3fn safetensors": folder / "mmdit-fp8.safetensors",
            "GGUF Q8_0": folder / "mmdit-Q8_0.gguf", "GGUF Q4_K": folder / "mmdit-Q4_K.gguf"}


def measure(path: Path, mode: str, depth: int) -> dict:
    code = CHILD.format(root=str(ROOT), path=str(path), mode=mode, depth=depth)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--keep", type=Path, default=None, help="write the files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        files = write_files(folder, args.depth)
        runs = [(name, path, "lowbit") for name, path in files.items()]
        runs.append(("reference: float8 file read dense (bf16)",
                     files["float8 e4m3fn safetensors"], "dense"))
        mib = 1024 * 1024
        print("| file | size | held in memory | extra peak RSS | × file | load time |")
        print("|---|---|---|---|---|---|")
        for name, path, mode in runs:
            size = path.stat().st_size
            result = measure(path, mode, args.depth)
            print(f"| {name} | {size / mib:.0f} MiB | {result['held'] / mib:.0f} MiB | "
                  f"{result['extra_kib'] / 1024:.0f} MiB | "
                  f"**{result['extra_kib'] * 1024 / size:.2f}** | {result['seconds']:.1f} s |")


if __name__ == "__main__":
    main()
