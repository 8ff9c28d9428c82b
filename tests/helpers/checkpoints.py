"""Tiny random checkpoints written in the real single-file layout, for pipeline tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from modules.models.families import Family
from modules.models.family_metadata import METADATA_KEY, family_to_metadata
from modules.models.sd_model import StableDiffusionModel, checkpoint_state_dict


def write_tiny_checkpoint(path: Path, family: Family, *, seed: int = 0) -> Path:
    """A seeded random model of `family`, saved as .safetensors with its declared family."""
    torch.manual_seed(seed)
    model = StableDiffusionModel(family=family)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    tensors = {k: v.contiguous() for k, v in checkpoint_state_dict(model).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={METADATA_KEY: family_to_metadata(family)})
    return path

