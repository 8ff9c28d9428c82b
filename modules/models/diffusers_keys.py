"""Rename diffusers `UNet2DConditionModel` / `AutoencoderKL` weights to LDM (CompVis) names.

Our networks use the names of single-file checkpoints, so a diffusers folder is the one
source that needs a mapping. The rules (docs/model-formats.md, "Diffusers key mapping"; the inverse
of diffusers' `convert_diffusers_to_original_stable_diffusion.py`), generalised to any number of
levels and blocks per level:

U-Net: `down_blocks.i.resnets.j` -> `input_blocks.{1 + i*(n+1) + j}.0`, its
`attentions.j` -> `....1`, `downsamplers.0.conv` -> `input_blocks.{(i+1)*(n+1)}.0.op`;
`up_blocks.i.resnets.j` -> `output_blocks.{i*(n+2) + j}.0`, upsampler -> `.1` or `.2`
(after the attention if the level has one); mid block -> `middle_block.0/1/2`; resnet
internals renamed (`norm1` -> `in_layers.0`, ...); attention internals are identical.
SDXL's `add_embedding.linear_1/2` -> `label_emb.0.0/0.2`.

ControlNet (diffusers `ControlNetModel`): the same encoder-side rules, plus the hint
encoder (`controlnet_cond_embedding.*` -> `input_hint_block.*`) and the zero
convolutions (`controlnet_down_blocks.i` -> `zero_convs.i.0`, `controlnet_mid_block`
-> `middle_block_out.0`) of LDM's `cldm.ControlNet`.

VAE: same names except resnets (`conv_shortcut` -> `nin_shortcut`), the decoder's level
index (diffusers counts up blocks from the lowest resolution, LDM from the highest) and
the mid attention, whose Linear projections become 1x1 convolutions.

Every key either maps or is reported: the converters raise `UnmappedKeysError` naming
the keys they do not understand; nothing is dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from modules.nn.configs import UNetConfig, VAEConfig

# diffusers ResnetBlock2D sub-module -> LDM ResBlock sub-module.
UNET_RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
# diffusers ResnetBlock2D (no time input) -> LDM VAE ResnetBlock.
VAE_RESNET_NAMES = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# diffusers VAE attention (three spellings across versions) -> LDM AttnBlock.
VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "query": "q",
    "to_k": "k",
    "key": "k",
    "to_v": "v",
    "value": "v",
    "to_out.0": "proj_out",
    "proj_attn": "proj_out",
}


class UnmappedKeysError(KeyError):
    """Keys of a state dict that the mapping does not know; `.keys` lists them."""

    def __init__(self, what: str, keys: Iterable[str], *, target: str = "LDM") -> None:
        self.keys = tuple(sorted(keys))
        shown = ", ".join(self.keys[:20]) + (" ..." if len(self.keys) > 20 else "")
        super().__init__(f"{len(self.keys)} {what} key(s) have no {target} name: {shown}")


@dataclass(frozen=True)
class KeyMapping:
    """The result of mapping names only.

    renames: diffusers name -> LDM name. unmapped: keys with no LDM name, or whose LDM
    name an earlier key already took (two spellings of one weight).
    """

    renames: dict[str, str]
    unmapped: tuple[str, ...]


@dataclass(frozen=True)
class _Rule:
    """Keys starting with `source` get `target` instead; `inner` renames the next name part."""

    source: str
    target: str
    inner: Mapping[str, str] | None = None


def _unet_encoder_rules(config: UNetConfig) -> list[_Rule]:
    n = config.num_res_blocks
    rules = [_Rule("conv_in.", "input_blocks.0.0.")]
    for i in range(len(config.channel_mult)):
        for j in range(n):
            block = 1 + i * (n + 1) + j
            rules.append(
                _Rule(
                    f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{block}.0.", UNET_RESNET_NAMES
                )
            )
            rules.append(_Rule(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{block}.1."))
        if i != len(config.channel_mult) - 1:
            rules.append(
                _Rule(
                    f"down_blocks.{i}.downsamplers.0.conv.",
                    f"input_blocks.{(i + 1) * (n + 1)}.0.op.",
                )
            )
    return rules


def _unet_decoder_rules(config: UNetConfig) -> list[_Rule]:
    n, levels = config.num_res_blocks, len(config.channel_mult)
    rules = []
    for i in range(levels):
        has_attention = config.transformer_depth[levels - 1 - i] > 0
        for j in range(n + 1):
            block = i * (n + 1) + j
            rules.append(
                _Rule(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{block}.0.", UNET_RESNET_NAMES)
            )
            rules.append(_Rule(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{block}.1."))
        if i != levels - 1:
            slot = 2 if has_attention else 1
            rules.append(
                _Rule(
                    f"up_blocks.{i}.upsamplers.0.conv.",
                    f"output_blocks.{i * (n + 1) + n}.{slot}.conv.",
                )
            )
    return rules


def _unet_encoder_side_rules(config: UNetConfig) -> list[_Rule]:
    """Embeddings, encoder and middle block: the part a ControlNet copies."""
    rules = [
        _Rule("time_embedding.linear_1.", "time_embed.0."),
        _Rule("time_embedding.linear_2.", "time_embed.2."),
    ]
    if config.adm_in_channels is not None:
        rules += [
            _Rule("add_embedding.linear_1.", "label_emb.0.0."),
            _Rule("add_embedding.linear_2.", "label_emb.0.2."),
        ]
    # Middle: Res, (ST), Res.
    has_attention = config.transformer_depth_middle > 0
    rules.append(_Rule("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET_NAMES))
    if has_attention:
        rules.append(_Rule("mid_block.attentions.0.", "middle_block.1."))
    rules.append(
        _Rule(
            "mid_block.resnets.1.", f"middle_block.{2 if has_attention else 1}.", UNET_RESNET_NAMES
        )
    )
    return rules + _unet_encoder_rules(config)


def _unet_rules(config: UNetConfig) -> list[_Rule]:
    """All U-Net rules: embeddings, encoder, middle, decoder, output head."""
    rules = [_Rule("conv_norm_out.", "out.0."), _Rule("conv_out.", "out.2.")]
    return rules + _unet_encoder_side_rules(config) + _unet_decoder_rules(config)


def _controlnet_rules(config: UNetConfig, hint_blocks: int) -> list[_Rule]:
    """diffusers `ControlNetModel`: the encoder side plus hint encoder and zero convs.

    `controlnet_cond_embedding.conv_in` is hint conv 0, `.blocks.k` hint conv k + 1 and
    `.conv_out` the last one (LDM indices count the SiLUs between them, hence 2x);
    `controlnet_down_blocks.i` is `zero_convs.i.0`, `controlnet_mid_block` `middle_block_out.0`.
    """
    rules = _unet_encoder_side_rules(config)
    rules.append(_Rule("controlnet_cond_embedding.conv_in.", "input_hint_block.0."))
    for k in range(hint_blocks):
        rules.append(
            _Rule(f"controlnet_cond_embedding.blocks.{k}.", f"input_hint_block.{2 * (k + 1)}.")
        )
    rules.append(
        _Rule("controlnet_cond_embedding.conv_out.", f"input_hint_block.{2 * (hint_blocks + 1)}.")
    )
    blocks = len(config.channel_mult) * (config.num_res_blocks + 1)  # input blocks
    for i in range(blocks):
        rules.append(_Rule(f"controlnet_down_blocks.{i}.", f"zero_convs.{i}.0."))
    rules.append(_Rule("controlnet_mid_block.", "middle_block_out.0."))
    return rules


def _vae_rules(config: VAEConfig) -> list[_Rule]:
    """VAE rules; the decoder's level index is reversed."""
    levels = len(config.ch_mult)
    rules = []
    for part in ("encoder", "decoder"):
        rules += [
            _Rule(f"{part}.conv_in.", f"{part}.conv_in."),
            _Rule(f"{part}.conv_out.", f"{part}.conv_out."),
            _Rule(f"{part}.conv_norm_out.", f"{part}.norm_out."),
            _Rule(f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", VAE_RESNET_NAMES),
            _Rule(f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", VAE_RESNET_NAMES),
            _Rule(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION_NAMES),
        ]
    for i in range(levels):
        for j in range(config.num_res_blocks):
            rules.append(
                _Rule(
                    f"encoder.down_blocks.{i}.resnets.{j}.",
                    f"encoder.down.{i}.block.{j}.",
                    VAE_RESNET_NAMES,
                )
            )
        rules.append(
            _Rule(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")
        )
        ldm_level = levels - 1 - i
        for j in range(config.num_res_blocks + 1):
            rules.append(
                _Rule(
                    f"decoder.up_blocks.{i}.resnets.{j}.",
                    f"decoder.up.{ldm_level}.block.{j}.",
                    VAE_RESNET_NAMES,
                )
            )
        rules.append(
            _Rule(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{ldm_level}.upsample.")
        )
    rules += [_Rule("quant_conv.", "quant_conv."), _Rule("post_quant_conv.", "post_quant_conv.")]
    return rules


def _rename(key: str, rules: list[_Rule]) -> str | None:
    """The LDM name of `key`, or None when no rule covers it."""
    for rule in rules:
        if not key.startswith(rule.source):
            continue
        rest = key[len(rule.source) :]
        if rule.inner is None:
            return rule.target + rest
        # Longest inner name first ("to_out.0" before "to_out").
        for name in sorted(rule.inner, key=len, reverse=True):
            if rest.startswith(name + "."):
                return rule.target + rule.inner[name] + rest[len(name) :]
        return None
    return None


def _map_names(keys: Iterable[str], rules: list[_Rule]) -> KeyMapping:
    # Longest source prefix first, so "conv_out." never shadows a longer prefix.
    ordered = sorted(rules, key=lambda rule: len(rule.source), reverse=True)
    renames, unmapped, taken = {}, [], set()
    for key in keys:
        target = _rename(key, ordered)
        # A second key landing on the same name (e.g. both `to_q` and `query`) is reported too.
        if target is None or target in taken:
            unmapped.append(key)
        else:
            renames[key] = target
            taken.add(target)
    return KeyMapping(renames=renames, unmapped=tuple(unmapped))


def map_unet_keys(keys: Iterable[str], config: UNetConfig) -> KeyMapping:
    """diffusers U-Net names -> LDM names, without touching tensors (header-only use)."""
    return _map_names(keys, _unet_rules(config))


def map_vae_keys(keys: Iterable[str], config: VAEConfig) -> KeyMapping:
    """diffusers VAE names -> LDM names, without touching tensors (header-only use)."""
    return _map_names(keys, _vae_rules(config))


def map_controlnet_keys(keys: Iterable[str], config: UNetConfig) -> KeyMapping:
    """diffusers `ControlNetModel` names -> LDM `cldm.ControlNet` names (header-only use).

    `config` is the copied encoder's U-Net config; the number of hint-encoder blocks is
    read from the keys themselves.
    """
    keys = list(keys)
    hint_blocks = {
        int(key.split(".")[2])
        for key in keys if key.startswith("controlnet_cond_embedding.blocks.")
    }
    return _map_names(keys, _controlnet_rules(config, len(hint_blocks)))


def controlnet_diffusers_to_ldm(
    sd: Mapping[str, torch.Tensor], config: UNetConfig
) -> dict[str, torch.Tensor]:
    """A diffusers `ControlNetModel` state dict with LDM names (shapes unchanged).

    Raises `UnmappedKeysError` if any key has no LDM name.
    """
    mapping = map_controlnet_keys(sd.keys(), config)
    if mapping.unmapped:
        raise UnmappedKeysError("diffusers ControlNet", mapping.unmapped)
    return {mapping.renames[key]: tensor for key, tensor in sd.items()}


def unet_diffusers_to_ldm(
    sd: Mapping[str, torch.Tensor], config: UNetConfig
) -> dict[str, torch.Tensor]:
    """A diffusers `UNet2DConditionModel` state dict with LDM names (shapes are unchanged).

    Raises `UnmappedKeysError` if any key has no LDM name.
    """
    mapping = map_unet_keys(sd.keys(), config)
    if mapping.unmapped:
        raise UnmappedKeysError("diffusers U-Net", mapping.unmapped)
    return {mapping.renames[key]: tensor for key, tensor in sd.items()}


def _is_vae_attention_projection(ldm_key: str) -> bool:
    parts = ldm_key.split(".")
    return "attn_1" in parts and parts[-2] in ("q", "k", "v", "proj_out") and parts[-1] == "weight"


def vae_diffusers_to_ldm(
    sd: Mapping[str, torch.Tensor], config: VAEConfig
) -> dict[str, torch.Tensor]:
    """A diffusers `AutoencoderKL` state dict with LDM names.

    Attention projections stored as Linear [C, C] become 1x1 convolutions [C, C, 1, 1].
    Raises `UnmappedKeysError` if any key has no LDM name.
    """
    mapping = map_vae_keys(sd.keys(), config)
    if mapping.unmapped:
        raise UnmappedKeysError("diffusers VAE", mapping.unmapped)
    out = {}
    for key, tensor in sd.items():
        ldm_key = mapping.renames[key]
        if _is_vae_attention_projection(ldm_key) and tensor.ndim == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1)
        out[ldm_key] = tensor
    return out


def map_unet_keys_to_diffusers(keys: Iterable[str], config: UNetConfig) -> KeyMapping:
    """LDM U-Net names -> diffusers names: the same rules read backwards.

    Used to give every module of our U-Net its diffusers name too (kohya's SD1/SD2
    LoRA files and PEFT files are named after the diffusers U-Net).
    """
    inverse = [
        _Rule(rule.target, rule.source,
              None if rule.inner is None else {v: k for k, v in rule.inner.items()})
        for rule in _unet_rules(config)
    ]
    return _map_names(keys, inverse)
