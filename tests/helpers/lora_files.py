"""Random LoRA-family tensors for tests, shaped from a model's own layers."""

from __future__ import annotations

import torch

from modules.networks.names import NameMap, Target


def lora_group(target: Target, rank: int, generator: torch.Generator, *,
               alpha: float | None = None, scale: float = 0.1) -> dict[str, torch.Tensor]:
    """kohya LoRA / LoCon tensors for one layer (3x3 convs get a 3x3 down, 1x1 up)."""
    out, inp = target.weight_shape[:2]
    kernel = target.weight_shape[2:]
    group = {
        "lora_down.weight": torch.randn(rank, inp, *kernel, generator=generator) * scale,
        "lora_up.weight": torch.randn(out, rank, *([1] * len(kernel)), generator=generator) * scale,
    }
    if alpha is not None:
        group["alpha"] = torch.tensor(alpha)
    return group


def kohya_lora(names: NameMap, prefixes: tuple[str, ...], *, rank: int = 4, seed: int = 1,
               alpha: float | None = 2.0, skip: tuple[str, ...] = (),
               scale: float | None = 0.1) -> dict[str, torch.Tensor]:
    """A kohya file covering every non-norm layer whose kohya name starts with `prefixes`
    (one spelling per layer: the first name in sorted order)."""
    generator = torch.Generator().manual_seed(seed)
    tensors, seen = {}, set()
    for name, target in sorted(names.targets.items()):
        if not name.startswith(prefixes) or target.kind == "norm" or name.startswith(skip):
            continue
        if (target.component, target.path) in seen:
            continue
        seen.add((target.component, target.path))
        group = lora_group(target, rank, generator, alpha=alpha, scale=scale or 0.1)
        for suffix, tensor in group.items():
            tensors[f"{name}.{suffix}"] = tensor
    return tensors
