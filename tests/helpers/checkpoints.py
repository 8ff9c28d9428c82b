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



def tiny_runtime(data_dir: Path, checkpoints: dict[str, Family], *flags: str):
    """A Runtime over `data_dir` whose checkpoint folder holds the named tiny models
    (`flags`: more command-line flags)."""
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime

    for name, family in checkpoints.items():
        write_tiny_checkpoint(data_dir / "models" / "Stable-diffusion" / f"{name}.safetensors",
                              family)
    runtime = Runtime.create(parse_args(["--data-dir", str(data_dir), *flags]))
    runtime.ready.set()
    return runtime


def finish(generator):
    """Drive a processing generator to its end; return (result, number of steps)."""
    steps = 0
    try:
        while True:
            next(generator)
            steps += 1
    except StopIteration as stop:
        return stop.value, steps
