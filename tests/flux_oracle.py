"""diffusers' Flux transformer as a test oracle, fed the weights of our `FluxTransformer`.

Our weights (BFL names) go through diffusers' own single-file converter,
`convert_flux_transformer_checkpoint_to_diffusers`, into a `FluxTransformer2DModel` of
the same tiny architecture. That converter splits each single block's fused `linear1`
at the full-size widths (3 x 3072 + 12288 rows, hard-coded), so a tiny `linear1` is
placed at those offsets in a zero-padded tensor before the call and the parts are cut
back to the tiny widths after it; every other tensor goes through the converter as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from modules.nn.flux import FluxConfig

# The widths at which diffusers' converter splits `linear1`: q, k, v, MLP input.
CONVERTER_SPLIT = (3072, 3072, 3072, 12288)
# diffusers' names of those parts.
LINEAR1_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")


def _split_widths(config: FluxConfig) -> tuple[int, ...]:
    hidden = config.hidden_size
    return hidden, hidden, hidden, int(hidden * config.mlp_ratio)


def _pad_linear1(tensor: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """Each part of a tiny `linear1` at the row offset the converter expects."""
    parts = tensor.split(widths, dim=0)
    padded = []
    for part, width, full in zip(parts, widths, CONVERTER_SPLIT, strict=True):
        padding = (0, 0) * (part.ndim - 1) + (0, full - width)
        padded.append(F.pad(part, padding))
    return torch.cat(padded, dim=0)


def bfl_to_diffusers(state_dict: dict[str, torch.Tensor],
                     config: FluxConfig) -> dict[str, torch.Tensor]:
    """Our state dict in diffusers' layout, by diffusers' converter (see module docstring)."""
    from diffusers.loaders.single_file_utils import (
        convert_flux_transformer_checkpoint_to_diffusers,
    )

    widths = _split_widths(config)
    checkpoint = {
        key: _pad_linear1(tensor, widths) if ".linear1." in key else tensor.clone()
        for key, tensor in state_dict.items()
    }
    converted = convert_flux_transformer_checkpoint_to_diffusers(checkpoint)
    for key, tensor in converted.items():
        if key.startswith("single_transformer_blocks."):
            for name, width in zip(LINEAR1_PARTS, widths, strict=True):
                if f".{name}." in key:
                    converted[key] = tensor[:width].clone()
    return converted


def diffusers_flux(config: FluxConfig) -> torch.nn.Module:
    """An (untrained) `FluxTransformer2DModel` with the architecture of `config`."""
    from diffusers import FluxTransformer2DModel

    if config.mlp_ratio != 4.0 or not config.qkv_bias:
        raise ValueError("diffusers' Flux has mlp_ratio 4 and q/k/v biases only")
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=config.in_channels,
        num_layers=config.depth,
        num_single_layers=config.depth_single_blocks,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_in_dim,
        pooled_projection_dim=config.vec_in_dim,
        guidance_embeds=config.guidance_embed,
        axes_dims_rope=config.axes_dim,
    )
