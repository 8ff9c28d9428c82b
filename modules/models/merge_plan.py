"""What happens to each weight of a checkpoint merge, decided from the headers alone.

A1111's Checkpoint Merger formulas (docs/a1111-semantics.md, "Checkpoint merger"), with M the
multiplier:

- No interpolation: A (used to convert, prune, bake a VAE or change precision);
- Weighted sum:     A * (1 - M) + B * M;
- Add difference:   A + (B - C) * M.

Which weights are merged follows A1111: a weight is merged when the other inputs have
it (weighted sum: weights whose name contains "model"); otherwise A's value is kept;
the CLIP `position_ids` are never merged (they are indices). A weighted sum also takes
B's "model" weights that A lacks. An inpainting (9 input channels) or
instruct-pix2pix (8) A merges with a normal B/C on the first 4 input channels of the
U-Net's first convolution and keeps the extra ones; the reverse order is refused.

Planning reads no tensor data, so every mismatch (a key with other shapes, a U-Net weight
missing from B or C, a VAE that fits no weight of A) is reported, naming the key and the
shapes, before anything is read or written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import torch

from modules.errors import ParamsError
from modules.models.families import UNET_PREFIX, VAE_PREFIX
from modules.models.safetensors_io import TensorInfo

NO_INTERPOLATION = "No interpolation"
WEIGHTED_SUM = "Weighted sum"
ADD_DIFFERENCE = "Add difference"
INTERP_METHODS = (NO_INTERPOLATION, WEIGHTED_SUM, ADD_DIFFERENCE)
SKIP_ON_MERGE = ("cond_stage_model.transformer.text_model.embeddings.position_ids",)
INPUT_CONV = UNET_PREFIX + "input_blocks.0.0.weight"
# Extra U-Net input channels of A mark the variant; the merged file's name says so.
VARIANT_SUFFIX = {9: ".inpainting", 8: ".instruct-pix2pix"}

Op = Literal["copy_a", "copy_b", "vae", "merge"]


@dataclass(frozen=True)
class Step:
    """One output weight: where it comes from, and its name, shape and dtype in the file."""

    key: str
    op: Op
    out: TensorInfo
    channels: int | None = None  # merge only the first `channels` input channels (inpainting A)


@dataclass(frozen=True)
class MergeInputs:
    """The tensors headers of the inputs (B and C are None when the method does not use them)."""

    a: dict[str, TensorInfo]
    b: dict[str, TensorInfo] | None
    c: dict[str, TensorInfo] | None
    vae: dict[str, TensorInfo] | None  # bare VAE names (`encoder.*`, `decoder.*`, ...)
    labels: tuple[str, str, str]  # how errors name A, B and C ("B (name.safetensors)")


FIELDS = ("primary_model_name", "secondary_model_name", "tertiary_model_name")


def plan_merge(inputs: MergeInputs, *, method: str, save_as_half: bool,
               discard: re.Pattern | None) -> list[Step]:
    """The ordered steps that produce the merged checkpoint (A's order, then B-only keys)."""
    _check_unet_coverage(inputs, method)
    steps: list[Step] = []
    for key, info in inputs.a.items():
        if discard is not None and discard.search(key):
            continue
        steps.append(_step_for(key, info, inputs, method, save_as_half))
    if method == WEIGHTED_SUM:
        for key, info in inputs.b.items():
            if key not in inputs.a and "model" in key and not (discard and discard.search(key)):
                steps.append(Step(key, "copy_b", _out(info, save_as_half)))
    _check_vae_fits(inputs)
    return steps


def _step_for(key: str, info: TensorInfo, inputs: MergeInputs, method: str,
              save_as_half: bool) -> Step:
    out = _out(info, save_as_half)
    vae_key = key[len(VAE_PREFIX):] if key.startswith(VAE_PREFIX) else None
    if inputs.vae is not None and vae_key in inputs.vae:
        _require_shape(key, info, inputs.vae[vae_key], inputs.labels[0], "the baked VAE",
                       "bake_in_vae")
        return Step(key, "vae", out)
    if method == NO_INTERPOLATION or key in SKIP_ON_MERGE or not info.torch_dtype.is_floating_point:
        return Step(key, "copy_a", out)
    others = [inputs.b] if method == WEIGHTED_SUM else [inputs.b, inputs.c]
    if any(key not in other for other in others) or (method == WEIGHTED_SUM and "model" not in key):
        return Step(key, "copy_a", out)
    channels = None
    for other, label, field in zip(others, inputs.labels[1:], FIELDS[1:]):
        channels = _merge_channels(key, info, other[key], inputs.labels[0], label,
                                   field) or channels
    return Step(key, "merge", out, channels)


def _out(info: TensorInfo, save_as_half: bool) -> TensorInfo:
    if save_as_half and info.torch_dtype.is_floating_point:
        return TensorInfo(shape=info.shape, dtype="F16")
    return info


def _require_shape(key: str, a: TensorInfo, other: TensorInfo, a_label: str, label: str,
                   field: str) -> None:
    if a.shape != other.shape:
        raise ParamsError(field, f"{key}: {a_label} has shape {list(a.shape)} but "
                                         f"{label} has {list(other.shape)}; the models have "
                                         f"different architectures")


def _merge_channels(key: str, a: TensorInfo, other: TensorInfo, a_label: str,
                    label: str, field: str) -> int | None:
    """None for equal shapes; the shared channel count for an inpainting/ip2p A."""
    if a.shape == other.shape:
        return None
    if key == INPUT_CONV and len(a.shape) == len(other.shape) == 4 \
            and a.shape[0] == other.shape[0] and a.shape[2:] == other.shape[2:]:
        if a.shape[1] > other.shape[1]:
            return other.shape[1]
        raise ParamsError(field, f"{key}: {label} has {other.shape[1]} input channels "
                                         f"and {a_label} {a.shape[1]}; when merging an "
                                         f"inpainting or instruct-pix2pix model with a normal "
                                         f"one, the primary model (A) must be the special one")
    _require_shape(key, a, other, a_label, label, field)
    return None


def _check_unet_coverage(inputs: MergeInputs, method: str) -> None:
    """B (and C) must have every U-Net weight of A: otherwise they are other architectures."""
    others = {WEIGHTED_SUM: [inputs.b], ADD_DIFFERENCE: [inputs.b, inputs.c]}.get(method, [])
    for other, label, field in zip(others, inputs.labels[1:], FIELDS[1:]):
        missing = [k for k in inputs.a if k.startswith(UNET_PREFIX) and k not in other]
        if missing:
            raise ParamsError(field, f"{label} has no {missing[0]} (and "
                                             f"{len(missing) - 1} more U-Net weights of "
                                             f"{inputs.labels[0]}); the models have different "
                                             f"architectures")


def _check_vae_fits(inputs: MergeInputs) -> None:
    if inputs.vae is not None and not any(VAE_PREFIX + k in inputs.a for k in inputs.vae):
        raise ParamsError("bake_in_vae", f"none of the VAE's weights is a first_stage_model "
                                         f"weight of {inputs.labels[0]}")


def merged_value(step: Step, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, *,
                 method: str, multiplier: float) -> torch.Tensor:
    """The formula for one weight, computed in float32, returned in the step's dtype."""
    result = a.to(torch.float32, copy=True)
    part = result[:, :step.channels] if step.channels is not None else result
    b32 = b.to(torch.float32)
    if method == WEIGHTED_SUM:
        part.copy_(part * (1 - multiplier) + b32 * multiplier)
    else:
        part.copy_(part + (b32 - c.to(torch.float32)) * multiplier)
    return result.to(step.out.torch_dtype)
