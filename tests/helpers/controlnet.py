"""Test helpers for the built-in ControlNet extension: its package on sys.path, tiny files."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

EXTENSION = Path(__file__).resolve().parent.parent.parent / "extensions" / "controlnet"


def use_extension_package() -> None:
    """Make `easel_controlnet` importable in tests (the loader does this at run time)."""
    if str(EXTENSION) not in sys.path:
        sys.path.insert(0, str(EXTENSION))


def write_tiny_controlnet(path: Path, unet_config, *, seed: int = 0, scale: float = 0.05) -> Path:
    """A random ControlNet for `unet_config` in the LDM layout (`control_model.` prefix).

    Weights are moved off their init (the zero convolutions start at zero) so it has an
    effect.
    """
    from modules.nn.controlnet import ControlNet, ControlNetConfig

    torch.manual_seed(seed)
    model = ControlNet(config=ControlNetConfig.for_unet(unet_config))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"control_model." + k: v.contiguous() for k, v in model.state_dict().items()},
              str(path))
    return path
