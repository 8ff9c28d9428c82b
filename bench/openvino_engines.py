"""The two OpenVINO engines the CPU benchmarks compare: Easel's and plain OpenVINO.

* Easel's: our U-Net through `modules.models.openvino_unet.OpenVINOUNet`, as
  `--cpu-backend openvino` runs it (weight-less template, dynamic shapes, one compiled
  model for the checkpoint's weights).
* Plain OpenVINO: what CPU users run today (FastSD CPU, SD.Next's OpenVINO backend,
  optimum-intel): diffusers' `UNet2DConditionModel` converted with
  `openvino.convert_model` at a static shape (weights baked in) and compiled for the CPU.
Both compute in the precision `INFERENCE_PRECISION_HINT` names (f32 or bf16).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch


def precision_hint(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "f32"


def easel_openvino(unet, cache_dir: Path | None = None, *, int8_linears: bool = False):
    """`unet(x, t, context, y=None, **_)` through Easel's OpenVINO backend."""
    from modules.models.openvino_unet import OpenVINOUNet

    folder = cache_dir or Path(tempfile.mkdtemp(prefix="easel-ov-"))
    backend = OpenVINOUNet(unet=unet, cache_dir=folder, int8_linears=int8_linears)

    def call(x, t, context=None, y=None, **_):
        return backend({}, x, t, context, y)

    call.backend = backend
    return call


class _PlainCall(torch.nn.Module):
    """diffusers' U-Net with a tensor output, for the converter."""

    def __init__(self, unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         return_dict=False)[0]


def plain_openvino(theirs, sample: torch.Tensor, context: torch.Tensor, dtype: torch.dtype):
    """diffusers' U-Net converted and compiled at these static shapes; called as diffusers'
    is (`unet(sample, t, encoder_hidden_states=...)`, `.sample` on the result)."""
    import openvino as ov

    timestep = torch.tensor([500.0])
    with torch.no_grad():
        model = ov.convert_model(_PlainCall(theirs.float()),
                                 example_input=(sample.float(), timestep, context.float()))
    compiled = ov.Core().compile_model(model, "CPU",
                                       {"INFERENCE_PRECISION_HINT": precision_hint(dtype)})

    def call(sample, t, encoder_hidden_states):
        step = torch.as_tensor(t, dtype=torch.float32).reshape(-1)[:1]
        out = compiled([sample.float().numpy(), step.numpy(),
                        encoder_hidden_states.float().numpy()])[0]
        return SimpleNamespace(sample=torch.from_numpy(out.copy()).to(sample.dtype))

    return call
