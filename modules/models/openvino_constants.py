"""Weights as OpenVINO constants, for `modules.models.openvino_unet`.

The constants share the tensors' memory rather than copying them: OpenVINO's CPU plugin
reads much of a compiled model's weights in place, so a copy would stay resident beside the
loaded model (measured for SD1.5 fp32: a compile added 4.9 GB with copies, 1.5 GB without).
Sharing makes the caller responsible for the memory: each function returns the arrays its
constants read, to be kept alive as long as the model or its compiled form.

A weight that changes from call to call (a LoRA set's merged copy) is a runtime input
instead (`weight_input`, fed by `input_tensor`), so that a new set needs no compile.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

import numpy as np
import torch
from torch import Tensor


def as_array(tensor: Tensor) -> np.ndarray:
    """A contiguous float32 array of `tensor`: its own memory when it is one already."""
    return tensor.detach().float().contiguous().numpy()


# Half-width weights kept as they are, by their OpenVINO type: numpy has no bfloat16, so
# their bits travel as int16 and OpenVINO reads them as this type.
_HALF_TYPES = MappingProxyType({torch.bfloat16: "bf16", torch.float16: "f16"})


def weight_constant(tensor: Tensor, *, int8: bool = False) -> tuple[Any, list[np.ndarray]]:
    """The node standing for one weight, with a float32 output as the template's input was,
    and the arrays it reads: float32 as it is; bf16 / fp16 as it is, behind a Convert (the
    CPU plugin computes in bf16 from such weights without a float32 copy); `int8_weight`."""
    if int8:
        return int8_weight(tensor.float())
    import openvino as ov
    import openvino.opset13 as ops

    if tensor.dtype in _HALF_TYPES:  # (channels-last convolution weights: a half copy)
        bits = _half_bits(tensor)
        shared = ov.Tensor(bits, list(tensor.shape), getattr(ov.Type, _HALF_TYPES[tensor.dtype]))
        return ops.convert(ov.op.Constant(shared, shared_memory=True), "f32"), [bits]
    array = as_array(tensor)
    return ov.op.Constant(array, shared_memory=True), [array]


def input_tensor(tensor: Tensor) -> Any:
    """An OpenVINO tensor reading `tensor`'s memory (a contiguous copy when it is not): the
    same bits, typed bf16 / fp16 for half-width weights, float32 for the rest."""
    import openvino as ov

    if tensor.dtype not in _HALF_TYPES:
        return ov.Tensor(as_array(tensor), shared_memory=True)
    return ov.Tensor(_half_bits(tensor), list(tensor.shape),
                     getattr(ov.Type, _HALF_TYPES[tensor.dtype]))


def _half_bits(tensor: Tensor) -> np.ndarray:
    """A half-width tensor's bits as int16 (its own memory when contiguous; the array keeps
    the tensor alive)."""
    return tensor.detach().contiguous().view(torch.int16).numpy()


def weight_input(like: Tensor) -> tuple[Any, Any]:
    """A runtime input for a weight shaped and typed like `like` (fed by `input_tensor`):
    the Parameter, and the node giving its value in float32 as the template's input was."""
    import openvino as ov
    import openvino.opset13 as ops

    if like.dtype not in _HALF_TYPES:
        parameter = ops.parameter(list(like.shape), ov.Type.f32)
        return parameter, parameter
    parameter = ops.parameter(list(like.shape), getattr(ov.Type, _HALF_TYPES[like.dtype]))
    return parameter, ops.convert(parameter, "f32")


def int8_weight(weight: Tensor) -> tuple[Any, list[np.ndarray]]:
    """A linear layer's weight as int8 with one float32 scale per output row (symmetric,
    absmax / 127), dequantised in the graph: OpenVINO's CPU plugin keeps such a
    Convert-Multiply pattern on a MatMul's weight compressed and dequantises inside its
    fully-connected kernel (weight-only int8; activations stay float). Returns the node
    and the arrays its constants share."""
    import openvino as ov
    import openvino.opset13 as ops

    scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127
    quantised = torch.round(weight / scale).clamp(-127, 127).to(torch.int8)
    held = [quantised.numpy(), scale.numpy()]
    values = ops.convert(ov.op.Constant(held[0], shared_memory=True), "f32")
    return ops.multiply(values, ov.op.Constant(held[1], shared_memory=True)), held
