"""Tiny MMDiT configs for the SD3 tests, their diffusers counterparts and random weights.

Three styles, each of depth 3 (a first block, a middle block, the pre-only last block):
SD3 (no qk norm), SD3.5 Large (RMS qk norm), SD3.5 Medium (qk norm, MMDiT-X `attn2` in
blocks 0 and 1). Position grids of 8×8 patches; 32-wide text tokens, a 24-wide pooled vector.
"""

from __future__ import annotations

import dataclasses

import torch

from modules.nn.mmdit import SD3_MEDIUM, SD35_LARGE, SD35_MEDIUM, MMDiT, MMDiTConfig

_TINY = {"depth": 3, "head_dim": 8, "pos_embed_max_size": 8, "adm_in_channels": 24,
         "context_in_channels": 32}
TINY_SD3 = dataclasses.replace(SD3_MEDIUM, **_TINY)
TINY_SD35_LARGE = dataclasses.replace(SD35_LARGE, **_TINY)
TINY_SD35_MEDIUM = dataclasses.replace(SD35_MEDIUM, **_TINY, x_block_self_attn_layers=(0, 1))
TINY_MMDITS = {"sd3": TINY_SD3, "sd35_large": TINY_SD35_LARGE, "sd35_medium": TINY_SD35_MEDIUM}


def sd3_diffusers_config(config: MMDiTConfig) -> dict:
    """`SD3Transformer2DModel` keyword arguments of the same network."""
    return dict(
        sample_size=config.pos_embed_max_size * config.patch_size,
        patch_size=config.patch_size,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        num_layers=config.depth,
        attention_head_dim=config.head_dim,
        num_attention_heads=config.num_heads,
        joint_attention_dim=config.context_in_channels,
        caption_projection_dim=config.hidden_size,
        pooled_projection_dim=config.adm_in_channels,
        pos_embed_max_size=config.pos_embed_max_size,
        dual_attention_layers=config.x_block_self_attn_layers,
        qk_norm="rms_norm" if config.qk_norm == "rms" else None,
    )


def random_mmdit(config: MMDiTConfig, seed: int = 0) -> MMDiT:
    """Our MMDiT with every parameter and the position grid moved off its default init."""
    torch.manual_seed(seed)
    model = MMDiT(config=config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.add_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model
