"""ESRGAN state-dict layouts, mapped onto `RRDBNet`'s (BasicSR / Real-ESRGAN) names.

Three layouts exist in the wild (docs/model-formats.md, "Upscaler files"):

* Real-ESRGAN / BasicSR ("new"): `conv_first`, `body.N.rdbK.convJ`, `conv_body`,
  `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`; files often wrap the dict in
  `params_ema` or `params`. The x2plus / x1 models take 12 / 48 input channels
  (pixel-unshuffled RGB).
* ESRGAN "old" (the original `RRDB_ESRGAN_x4.pth` and most community models such as
  4x-UltraSharp): one `nn.Sequential` named `model`: `model.0` first conv,
  `model.1.sub.N.RDBK.convJ.0` trunk blocks, `model.1.sub.<num_blocks>` trunk conv,
  then per x2 step (upsample, conv, lrelu) with the conv at `model.3`, `model.6`, ...,
  then the HR conv and the last conv.
* ESRGAN "new-arch" (xinntao's later `RRDBNet_arch.py`): `conv_first`,
  `RRDB_trunk.N.RDBK.convJ`, `trunk_conv`, `upconv1`, `upconv2`, `HRconv`,
  `conv_last`.
"""

from __future__ import annotations

import math
import re

import torch

from modules.upscaling.rrdbnet import RRDBConfig

Tensors = dict[str, torch.Tensor]

OLD_BLOCK = re.compile(r"^model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$")
NEW_ARCH_BLOCK = re.compile(r"^RRDB_trunk\.(\d+)\.RDB(\d)\.conv(\d)\.(weight|bias)$")
BASICSR_BLOCK = re.compile(r"^body\.(\d+)\.rdb(\d)\.conv(\d)\.(weight|bias)$")


def unwrap(state: dict) -> Tensors:
    """The tensor dict inside BasicSR's `params_ema` / `params` or a `state_dict`."""
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(state.get(key), dict):
            return unwrap(state[key])
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def layout(state: Tensors) -> str | None:
    """"basicsr", "old", "new_arch" or None when the dict is not an ESRGAN."""
    if "conv_first.weight" in state and "body.0.rdb1.conv1.weight" in state:
        return "basicsr"
    if "model.0.weight" in state and "model.1.sub.0.RDB1.conv1.0.weight" in state:
        return "old"
    if "conv_first.weight" in state and "RRDB_trunk.0.RDB1.conv1.weight" in state:
        return "new_arch"
    return None


def _from_old(state: Tensors) -> Tensors:
    out: Tensors = {}
    convs = sorted({int(m.group(1)) for k in state
                    if (m := re.match(r"^model\.(\d+)\.weight$", k))})
    last_sub = max(int(m.group(1)) for k in state
                   if (m := re.match(r"^model\.1\.sub\.(\d+)\.weight$", k)))
    tail = [c for c in convs if c >= 2]  # up convs, then HR conv, then the last conv
    names = {0: "conv_first", tail[-2]: "conv_hr", tail[-1]: "conv_last"}
    names.update({c: f"conv_up{k + 1}" for k, c in enumerate(tail[:-2])})
    for key, value in state.items():
        if m := OLD_BLOCK.match(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := re.match(r"^model\.1\.sub\.(\d+)\.(weight|bias)$", key):
            if int(m[1]) == last_sub:
                out[f"conv_body.{m[2]}"] = value
        elif m := re.match(r"^model\.(\d+)\.(weight|bias)$", key):
            out[f"{names[int(m[1])]}.{m[2]}"] = value
    return out


NEW_ARCH_NAMES = {"trunk_conv": "conv_body", "HRconv": "conv_hr", "conv_first": "conv_first",
                  "conv_last": "conv_last"}


def _from_new_arch(state: Tensors) -> Tensors:
    out: Tensors = {}
    for key, value in state.items():
        if m := NEW_ARCH_BLOCK.match(key):
            out[f"body.{m[1]}.rdb{m[2]}.conv{m[3]}.{m[4]}"] = value
        elif m := re.match(r"^upconv(\d+)\.(weight|bias)$", key):
            out[f"conv_up{m[1]}.{m[2]}"] = value
        else:
            module, _, kind = key.rpartition(".")
            out[f"{NEW_ARCH_NAMES.get(module, module)}.{kind}"] = value
    return out


def to_basicsr(state: Tensors) -> Tensors:
    """Any ESRGAN layout -> `RRDBNet` names; raises ValueError for other networks."""
    kind = layout(state)
    if kind is None:
        raise ValueError("not an ESRGAN / Real-ESRGAN state dict")
    return {"basicsr": dict, "old": _from_old, "new_arch": _from_new_arch}[kind](state)


def config_from(state: Tensors) -> RRDBConfig:
    """The architecture numbers of a `to_basicsr` state dict (shapes only)."""
    first = state["conv_first.weight"]
    blocks = {int(m[1]) for k in state if (m := BASICSR_BLOCK.match(k))}
    ups = [k for k in state if re.match(r"^conv_up\d+\.weight$", k)]
    out_channels = state["conv_last.weight"].shape[0]
    unshuffle = math.isqrt(first.shape[1] // out_channels) if first.shape[1] > out_channels else 1
    return RRDBConfig(in_channels=first.shape[1] // unshuffle**2, out_channels=out_channels,
                      num_features=first.shape[0], num_blocks=len(blocks),
                      growth=state["body.0.rdb1.conv1.weight"].shape[0],
                      num_upsamples=len(ups), unshuffle=unshuffle)
