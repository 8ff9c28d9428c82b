"""Sinusoidal embeddings of scalars (diffusion timesteps, SDXL image sizes).

The transformer position encoding of Vaswani et al. (2017) applied to a scalar: half
the channels are cos(t * f_i), half sin(t * f_i), with frequencies
f_i = max_period^(-i / half). LDM puts cos first ("flip_sin_to_cos" in diffusers).
SDXL (Podell et al., 2023) embeds original size, crop and target size the same way.
"""

from __future__ import annotations

import math

import torch


def timestep_embedding(timesteps: torch.Tensor, dim: int,
                       max_period: float = 10000.0) -> torch.Tensor:
    """Embed a 1-D tensor of N scalars into an (N, dim) float32 tensor: [cos | sin]."""
    half = dim // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                    device=timesteps.device)
    freqs = torch.exp(exponent / half)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    # An odd width gets one zero channel, as in LDM.
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding
