"""Which int8 is faster on this CPU: torch's dynamic quantization or OpenVINO's int8 weights.

    PYTHONPATH=. .venv/bin/python bench/bench_cpu_backend.py --parts int8 [--runs 3]

Issue 22 asks for weight-only int8 by NNCF's weight compression or torch's int8 dynamic
quantization, whichever is faster here. `--cpu-int8` builds NNCF's pattern itself (int8
constants, Convert, Multiply by a per-row scale: what `nncf.compress_weights` emits for
INT8_SYM, without adding NNCF and its dependencies). Torch's candidate is
`torch.ao.quantization.quantize_dynamic` over every `nn.Linear`: int8 weights and int8
activations quantised per call (fbgemm). It runs on diffusers' U-Net (Easel's attention
reads `to_q.weight` for its fused projection, which a quantised module no longer has), so
each int8 engine is set against its own fp32 engine, all four alternating in one process.
"""

from __future__ import annotations

import copy
import json
import tempfile
from pathlib import Path

import torch


def bench_int8(runs: int) -> dict:
    from bench.bench_core import build_pair
    from bench.bench_cpu_backend import alternate, psnr, release_memory, step_inputs
    from bench.openvino_engines import easel_openvino

    ours, theirs = build_pair()
    quantised = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(theirs), {torch.nn.Linear}, dtype=torch.qint8)
    release_memory()
    x, t, context = step_inputs()
    with tempfile.TemporaryDirectory() as folder:
        fast = easel_openvino(ours, Path(folder))
        fast_int8 = easel_openvino(ours, Path(folder), int8_linears=True)
        engines = {
            "diffusers": lambda: theirs(x, t, encoder_hidden_states=context).sample,
            "diffusers_torch_int8": lambda: quantised(x, t, encoder_hidden_states=context).sample,
            "easel_openvino": lambda: fast(x, t, context),
            "easel_openvino_int8": lambda: fast_int8(x, t, context),
        }
        outputs, medians = alternate(engines, runs)
    row = {"part": "int8", **{f"{name}_s": round(s, 3) for name, s in medians.items()}}
    row["torch_int8_vs_its_fp32"] = round(medians["diffusers_torch_int8"]
                                          / medians["diffusers"], 3)
    row["openvino_int8_vs_its_fp32"] = round(medians["easel_openvino_int8"]
                                             / medians["easel_openvino"], 3)
    row["torch_int8_psnr_vs_fp32_db"] = round(psnr(outputs["diffusers_torch_int8"],
                                                   outputs["diffusers"]), 2)
    row["openvino_int8_psnr_vs_fp32_db"] = round(psnr(outputs["easel_openvino_int8"],
                                                      outputs["diffusers"]), 2)
    print(json.dumps(row), flush=True)
    return row
