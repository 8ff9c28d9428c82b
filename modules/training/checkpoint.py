"""Writing trained networks as one single-file SD1 checkpoint in the LDM layout.

The keys are those of a real SD1 `.safetensors`: the U-Net under
`model.diffusion_model.`, the autoencoder under `first_stage_model.` and the CLIP text
model under `cond_stage_model.transformer.text_model.` (transformers' names), so the
normal loader reads the demo with no special case. The `__metadata__` holds the
modelspec keys and the `easel.family` declaration (see `demo_config`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.models.families import UNET_PREFIX, VAE_PREFIX, Family
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.text_encoder_export import to_checkpoint_layout
from modules.nn.text_encoders import TextEncoder
from modules.nn.unet import UNetModel
from modules.training.demo_config import demo_metadata


def save_model_file(tensors: dict[str, torch.Tensor], path: str | os.PathLike[str],
                    metadata: dict[str, str]) -> Path:
    """Write a `.safetensors` model file atomically, readable by everyone (as a download is).

    The file is written beside the target and renamed, so a crash never leaves half a
    model; the mode is set explicitly because the writer's may be private (0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    partial.chmod(0o644)
    os.replace(partial, path)
    return path


def ldm_state_dict(*, family: Family, unet: UNetModel, vae: AutoencoderKL,
                   text_encoder: TextEncoder) -> dict[str, torch.Tensor]:
    """Every tensor of the three networks under its LDM checkpoint name."""
    tensors = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    tensors |= {VAE_PREFIX + k: v for k, v in vae.state_dict().items()}
    spec = family.text_encoders[0]
    exported = to_checkpoint_layout(text_encoder.transformer.state_dict(), spec.config)
    tensors |= {spec.prefix + k: v for k, v in exported.items()}
    return tensors


def save_checkpoint(path: str | os.PathLike[str], *, family: Family, unet: UNetModel,
                    vae: AutoencoderKL,
                    text_encoder: TextEncoder, dtype: torch.dtype = torch.float16,
                    title: str | None = None) -> Path:
    """Write the networks as `.safetensors` (floating tensors cast to `dtype`); returns the path."""
    path = Path(path)
    tensors = {
        k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).contiguous()
        for k, v in ldm_state_dict(family=family, unet=unet, vae=vae,
                                   text_encoder=text_encoder).items()
    }
    metadata = demo_metadata(family) if title is None else demo_metadata(family, title=title)
    return save_model_file(tensors, path, metadata)
