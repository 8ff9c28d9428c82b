"""Parity tests against the diffusers oracle: random weights, and a relative closeness check.

`perturb` moves every parameter of a freshly built model off its default init (unit norms,
zero biases) so that each one changes the output; `assert_close` compares our output with
the oracle's: max |ours - reference| <= tolerance * max |reference|. Each test states its
own tolerance and passes it in.
"""

from __future__ import annotations

import torch


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Add `scale` times seeded Gaussian noise to every parameter, in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def assert_close(ours: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    """Same shape, and max |ours - reference| <= tolerance * max |reference| (not ~0)."""
    assert ours.shape == reference.shape
    scale = reference.abs().max().item()
    assert scale > 1e-3, "degenerate reference output"
    difference = (ours - reference).abs().max().item()
    assert difference <= tolerance * scale, f"max diff {difference} vs output scale {scale}"
