"""T2I-Adapter weight files: layout detection, config from shapes, safe loading.

Two layouts of the same networks (`modules.nn.t2i_adapter`):

- TencentARC's (`t2iadapter_*_sd14v1.pth`, `coadapter-*-sd15v1.pth`, their
  `.safetensors` conversions): the module's own names. Full: `conv_in`,
  `body.N.{in_conv,block1,block2}` (flat, `num_res_blocks` per level); light:
  `body.L.{in_conv,body.M.block1,out_conv}`; style: `style_embedding`,
  `transformer_layes.N...`, `ln_pre`, `ln_post`, `proj`.
- diffusers' `T2IAdapter` (`t2i-adapter-*-sdxl-1.0`, `diffusion_pytorch_model.safetensors`):
  `adapter.conv_in`, `adapter.body.L.in_conv`, `adapter.body.L.resnets.M.block1`, ...,
  renamed by `diffusers_to_tencentarc`.

Everything is decided from the header (names and shapes, never tensor data): the
kind, the hint channels and unshuffle factor from the first convolution's input width
(64 or 192 = 1 or 3 channels x 8x8: SD1; 256 or 768 = x 16x16: SDXL's `full_xl`), the
widths, the blocks per level. The base model's U-Net decides which features it needs
(`modules.nn.t2i_adapter.target_shapes`); an adapter made for another model (an SDXL
adapter on SD1, ...) is a `ModelLoadError` naming the file. Pickles go through the
allow-list unpickler (`single_file.load_file`), never plain `torch.load`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from modules.models.errors import ModelLoadError
from modules.models.single_file import load_file, read_file_header
from modules.nn.configs import UNetConfig
from modules.nn.t2i_adapter import StyleAdapter, T2IAdapter, T2IAdapterConfig, target_shapes

Shapes = Mapping[str, tuple[int, ...]]
DIFFUSERS_PREFIX = "adapter."
# TencentARC's style adapter: 8 heads (not in the shapes; every released file).
STYLE_HEADS = 8


def is_t2i_adapter(keys: Iterable[str]) -> bool:
    """Whether these state-dict keys are a T2I-Adapter, in either layout (header only)."""
    keys = set(keys)
    full = {"conv_in.weight", "body.0.block1.weight"}
    light = {"body.0.in_conv.weight", "body.0.body.0.block1.weight", "body.0.out_conv.weight"}
    style = {"style_embedding", "proj", "transformer_layes.0.attn.in_proj_weight"}
    diffusers = {"adapter.body.0.resnets.0.block1.weight"}
    return any(group <= keys for group in (full, light, style, diffusers))


def _int_parts(keys: Iterable[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for key in keys if (m := regex.fullmatch(key))})


def diffusers_to_tencentarc(keys: Iterable[str]) -> dict[str, str]:
    """diffusers' `T2IAdapter` names -> TencentARC's, for the full / full_xl / light layouts.

    Full: `adapter.body.L.in_conv` is the first block's `in_conv`, and
    `adapter.body.L.resnets.M` is flat block `L * num_res_blocks + M`. Light:
    `adapter.body.L.resnets.M` is `body.L.body.M`.
    """
    keys = list(keys)
    light = any(re.fullmatch(r"adapter\.body\.\d+\.out_conv\.weight", k) for k in keys)
    per_level = len(_int_parts(keys, r"adapter\.body\.0\.resnets\.(\d+)\.block1\.weight"))
    names = {}
    for key in keys:
        if not key.startswith(DIFFUSERS_PREFIX):
            raise KeyError(key)
        name = key[len(DIFFUSERS_PREFIX):]
        if match := re.fullmatch(r"body\.(\d+)\.resnets\.(\d+)\.(.*)", name):
            level, block, rest = int(match[1]), int(match[2]), match[3]
            name = (f"body.{level}.body.{block}.{rest}" if light
                    else f"body.{level * per_level + block}.{rest}")
        elif not light and (match := re.fullmatch(r"body\.(\d+)\.in_conv\.(.*)", name)):
            name = f"body.{int(match[1]) * per_level}.in_conv.{match[2]}"
        names[key] = name
    return names


def _unshuffle(width: int, path: str) -> tuple[int, int]:
    """(hint channels, unshuffle factor) of the first layer's input width."""
    for factor in (8, 16):
        for channels in (3, 1):
            if width == channels * factor ** 2:
                return channels, factor
    raise ModelLoadError(path, f"T2I-Adapter input width {width} is neither 1 nor 3 channels "
                               "unshuffled by 8 (SD1) or 16 (SDXL)")


def _full_levels(shapes: Shapes, blocks: int, wanted: int) -> int:
    """Residual blocks per level of a flat full adapter.

    Widths change (an `in_conv`) only at a level's first block, so the count divides
    every such index; among the counts that fit, the one giving the base model's number
    of features wins, then TencentARC's four levels."""
    starts = [i for i in _int_parts(shapes, r"body\.(\d+)\.in_conv\.weight")
              if shapes[f"body.{i}.in_conv.weight"][0] != shapes[f"body.{i}.in_conv.weight"][1]]
    fits = [n for n in range(1, blocks + 1)
            if blocks % n == 0 and all(s % n == 0 for s in starts if s)]
    for levels in (wanted, 4):
        if blocks % levels == 0 and blocks // levels in fits:
            return blocks // levels
    return fits[-1] if fits else blocks


def _infer_full(shapes: Shapes, base: UNetConfig, path: str) -> T2IAdapterConfig:
    hint_channels, factor = _unshuffle(shapes["conv_in.weight"][1], path)
    kind = "full" if factor == 8 else "full_xl"
    blocks = len(_int_parts(shapes, r"body\.(\d+)\.block1\.weight"))
    wanted = len(target_shapes(base)) - (1 if kind == "full" else 0)
    per_level = _full_levels(shapes, blocks, wanted)
    channels = tuple(shapes[f"body.{i}.block1.weight"][0] for i in range(0, blocks, per_level))
    return T2IAdapterConfig(
        kind=kind, hint_channels=hint_channels, channels=channels, num_res_blocks=per_level,
        downscale=factor, kernel_size=shapes["body.0.block2.weight"][-1],
        skip_conv="body.0.skep.weight" in shapes,
        conv_down=any(k.endswith("down_opt.op.weight") for k in shapes))


def _infer_light(shapes: Shapes, path: str) -> T2IAdapterConfig:
    hint_channels, factor = _unshuffle(shapes["body.0.in_conv.weight"][1], path)
    levels = _int_parts(shapes, r"body\.(\d+)\.out_conv\.weight")
    return T2IAdapterConfig(
        kind="light", hint_channels=hint_channels, downscale=factor,
        channels=tuple(shapes[f"body.{i}.out_conv.weight"][0] for i in levels),
        num_res_blocks=len(_int_parts(shapes, r"body\.0\.body\.(\d+)\.block1\.weight")))


def _infer_style(shapes: Shapes) -> T2IAdapterConfig:
    _, tokens, width = shapes["style_embedding"]
    return T2IAdapterConfig(
        kind="style", width=width, context_dim=shapes["proj"][1], num_heads=STYLE_HEADS,
        num_tokens=tokens,
        num_layers=len(_int_parts(shapes, r"transformer_layes\.(\d+)\.ln_1\.weight")))


def infer_t2i_adapter_config(shapes: Shapes, *, base: UNetConfig,
                             path: str = "<state dict>") -> T2IAdapterConfig:
    """The config of TencentARC-named tensor shapes (header only)."""
    try:
        if "style_embedding" in shapes:
            return _infer_style(shapes)
        if "conv_in.weight" in shapes:
            return _infer_full(shapes, base, path)
        if "body.0.out_conv.weight" in shapes:
            return _infer_light(shapes, path)
    except (KeyError, ValueError, IndexError) as error:
        raise ModelLoadError(path, f"incomplete T2I-Adapter ({error!s})") from None
    raise ModelLoadError(path, "not a T2I-Adapter (no conv_in, body.0.out_conv or "
                               "style_embedding)")


def check_base(config: T2IAdapterConfig, base: UNetConfig, path: str) -> None:
    """A `ModelLoadError` unless `base`'s U-Net takes this adapter's output."""
    if config.kind == "style":
        if config.context_dim != base.context_dim:
            raise ModelLoadError(path, f"style adapter makes {config.context_dim}-wide tokens, "
                                       f"the model's text context is {base.context_dim} wide "
                                       "(an adapter for another base model)")
        return
    wanted = target_shapes(base)
    levels = len(wanted) - 1
    made = [(c, config.feature_downscale(i) // 8) for i, c in enumerate(config.channels)]
    fits = len(made) in (levels, levels + 1) and made == wanted[:len(made)]
    if not fits:
        raise ModelLoadError(path, "T2I-Adapter for another base model: its features "
                                   f"(channels, 1/scale of the latent) are {made}, this "
                                   f"model's U-Net takes {wanted[:levels]} (+ {wanted[-1]} "
                                   "at the middle block)")


def _tencentarc_names(keys: list[str], path: str) -> dict[str, str]:
    """file key -> TencentARC name."""
    if any(key.startswith(DIFFUSERS_PREFIX) for key in keys):
        try:
            return diffusers_to_tencentarc(keys)
        except KeyError as key:
            raise ModelLoadError(path, f"unexpected tensor {key} in a diffusers T2I-Adapter") \
                from None
    return {key: key for key in keys}


def load_t2i_adapter(path: str | os.PathLike[str], *, base: UNetConfig,
                     device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> T2IAdapter | StyleAdapter:
    """The adapter in `path` (safetensors or an allow-listed pickle), checked against `base`.

    :raises ModelLoadError: not a T2I-Adapter, a damaged file, or made for another model
    """
    path = os.fspath(Path(path))
    header = read_file_header(path)
    if not is_t2i_adapter(header.tensors):
        raise ModelLoadError(path, "not a T2I-Adapter")
    names = _tencentarc_names(list(header.tensors), path)
    shapes = {names[key]: tuple(info.shape) for key, info in header.tensors.items()}
    config = infer_t2i_adapter_config(shapes, base=base, path=path)
    check_base(config, base, path)
    module = StyleAdapter(config=config) if config.kind == "style" else T2IAdapter(config=config)
    tensors = load_file(path, dtype=dtype, device=device)
    state = {names[key]: tensor for key, tensor in tensors.items()}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ModelLoadError(path, f"T2I-Adapter tensors do not fit its layout "
                                   f"({str(error).splitlines()[0]} ...)") from None
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)
