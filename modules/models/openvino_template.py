"""The weight-less graph of a U-Net for OpenVINO (`modules.models.openvino_unet`'s template).

Our own `UNetModel` is traced once with every parameter as a graph *input* (its name as
the input's name) and dynamic batch, latent size and token count; ControlNet residuals are
inputs too. The graph holds no weights (a few MB), so one saved template serves every
checkpoint of an architecture; its file is named by `template_hash`.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from modules.nn.unet import ControlResiduals, UNetModel
from modules.nn.unet_patches import UNetPatch, UNetPatches

# The sources whose change makes a saved template stale.
_TRACED_SOURCES = ("unet.py", "unet_blocks.py", "unet_encoder.py", "transformer.py",
                   "attention.py", "ops.py", "timestep.py", "configs.py")
# Latent side of the calls that trace the U-Net and read its block shapes.
PROBE = 16


class _RecordShapes(UNetPatch):
    """Records each encoder block's output (channels, times halved): the shapes of the
    ControlNet residuals, which match those outputs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.shapes: list[tuple[int, int]] = []

    def after_input_block(self, h: Tensor, place) -> Tensor:
        self.shapes.append((h.shape[1], round(math.log2(self.size / h.shape[-1]))))
        return h


class _TracedCall(torch.nn.Module):
    """`unet(x, t, context, y, control)` with the parameters taken from the arguments.

    The tracer records how the inputs flow; passing the parameters in (as
    `torch.func.functional_call` does for a call, which refuses to run under the tracer)
    makes each weight a named graph input instead of a baked-in constant. The module's
    own parameters are put back when the call returns."""

    def __init__(self, unet: UNetModel, names: list[str], *, has_y: bool, controls: int):
        super().__init__()
        self.unet, self.names, self.has_y, self.controls = unet, names, has_y, controls
        self.slots = [(unet.get_submodule(n.rpartition(".")[0]), n.rpartition(".")[2])
                      for n in names]

    def forward(self, x, t, context, *rest):
        y = rest[0] if self.has_y else None
        rest = rest[1:] if self.has_y else rest
        # `controls` residual inputs: one per encoder block, then the middle block's.
        down, middle = rest[:self.controls - 1], rest[self.controls - 1]
        weights = rest[self.controls:]
        saved = [module._parameters[name] for module, name in self.slots]
        for (module, name), weight in zip(self.slots, weights, strict=True):
            module._parameters[name] = weight
        try:
            return self.unet(x, t, context, y, control=ControlResiduals(down=tuple(down),
                                                                         middle=middle))
        finally:
            for (module, name), weight in zip(self.slots, saved, strict=True):
                module._parameters[name] = weight


def record_control_shapes(unet: UNetModel) -> list[tuple[int, int]]:
    """(channels, times halved) of each encoder block's output: the ControlNet residuals'."""
    recorder = _RecordShapes(PROBE)
    x = torch.zeros(1, unet.config.in_channels, PROBE, PROBE, dtype=unet.dtype)
    context = torch.zeros(1, 1, unet.config.context_dim, dtype=unet.dtype)
    y = (torch.zeros(1, unet.config.adm_in_channels, dtype=unet.dtype)
         if unet.config.adm_in_channels is not None else None)
    with torch.inference_mode():
        unet(x, torch.zeros(1), context, y, patches=UNetPatches((recorder,)))
    return recorder.shapes


def template_hash(unet: UNetModel, ov) -> str:
    """What a saved template's file is named by: the config, the parameters, the library
    versions and the traced sources, so that a code change never loads a stale graph."""
    digest = hashlib.sha256(repr(unet.config).encode())
    # The parameters' names and shapes are the template's inputs.
    digest.update(repr([(n, tuple(p.shape)) for n, p in unet.named_parameters()]).encode())
    digest.update(f"{ov.__version__} {torch.__version__}".encode())
    folder = Path(__file__).resolve().parent.parent / "nn"
    for name in _TRACED_SOURCES:
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()[:20]


def convert_template(unet: UNetModel, ov, control_zeros: list[Tensor]) -> Any:
    """Trace the U-Net with its parameters and the ControlNet residuals as inputs
    (`control_zeros`: one residual of each shape, at batch 1 for a PROBE-sided latent)."""
    config = unet.config
    has_y = config.adm_in_channels is not None
    x = torch.zeros(1, config.in_channels, PROBE, PROBE)
    shapes = [[-1, config.in_channels, -1, -1], [-1], [-1, -1, config.context_dim]]
    example = [x, torch.zeros(1), torch.zeros(1, 2, config.context_dim)]
    if has_y:
        shapes.append([-1, config.adm_in_channels])
        example.append(torch.zeros(1, config.adm_in_channels))
    for control in control_zeros:
        shapes.append([-1, control.shape[1], -1, -1])
        example.append(control)
    params = [p.detach().float().contiguous() for p in unet.parameters()]
    shapes += [list(p.shape) for p in params]
    names = [name for name, _ in unet.named_parameters()]
    traced = _TracedCall(unet, names, has_y=has_y, controls=len(control_zeros))
    # The tracer warns of every shape test it records as a constant; ours are
    # layout choices (in-place adds, a residual already at its map's size).
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return ov.convert_model(traced, example_input=tuple(example + params),
                                input=[ov.PartialShape(s) for s in shapes])
