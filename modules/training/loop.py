"""A generic optimisation step over any subset of parameters, and an EMA of weights.

Every training loop in Easel (the demo's autoencoder, U-Net and text encoder; later
textual-inversion embeddings and LoRA) is the same few lines: compute a loss, step an
AdamW optimiser over *some* parameters with warm-up and cosine decay, clip the gradient
norm. `Trainer` is those lines, given the parameter list to train, so an embedding run
passes one tensor and a LoRA run passes its low-rank factors while the base model stays
frozen.

`EMA` keeps an exponential moving average of parameters (Polyak averaging); sampling
from the average of a short run is markedly cleaner than from its last iterate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable

import torch
from torch import nn


class Trainer:
    """AdamW on a list of parameters, with linear warm-up, cosine decay and grad clipping."""

    def __init__(self, *, parameters: Iterable[nn.Parameter], learning_rate: float,
                 total_steps: int,
                 warmup_steps: int = 100, weight_decay: float = 0.0, final_lr_fraction: float = 0.1,
                 grad_clip: float | None = 1.0, betas: tuple[float, float] = (0.9, 0.99)) -> None:
        """
        :param parameters: the tensors to train; everything else is left untouched
        :param learning_rate: the peak learning rate, reached after `warmup_steps`
        :param total_steps: steps of the whole run, for the cosine decay
        :param final_lr_fraction: the learning rate at the end, as a fraction of the peak
        """
        self.parameters = [p for p in parameters if p.requires_grad]
        if not self.parameters:
            raise ValueError("Trainer needs at least one parameter with requires_grad=True")
        self.optimizer = torch.optim.AdamW(self.parameters, lr=learning_rate, betas=betas,
                                           weight_decay=weight_decay)
        self.peak_lr = learning_rate
        self.total_steps = max(1, total_steps)
        self.warmup_steps = warmup_steps
        self.final_lr_fraction = final_lr_fraction
        self.grad_clip = grad_clip
        self.step_count = 0

    def learning_rate(self, step: int) -> float:
        """Warm-up then cosine decay from the peak to `final_lr_fraction` of it."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        progress = min(1.0,
                       (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        cosine = 0.5 * (1 + math.cos(math.pi * progress))
        return self.peak_lr * (self.final_lr_fraction + (1 - self.final_lr_fraction) * cosine)

    def step(self, loss: torch.Tensor) -> float:
        """Back-propagate `loss`, update the parameters, return the loss as a float."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Clip the global gradient norm, which keeps early high-lr steps stable.
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        self.step_count += 1
        return float(loss.detach())


class EMA:
    """An exponential moving average of some modules' parameters (decay warmed up)."""

    def __init__(self, *, modules: Iterable[nn.Module], decay: float = 0.995) -> None:
        self.modules = list(modules)
        self.decay = decay
        self.updates = 0
        self.shadow = [
            {name: p.detach().clone() for name, p in m.named_parameters()} for m in self.modules
        ]

    @torch.no_grad()
    def update(self) -> None:
        """Blend the current parameters in; early on the decay is lower (1 + n) / (10 + n)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for module, shadow in zip(self.modules, self.shadow):
            for name, p in module.named_parameters():
                shadow[name].lerp_(p.detach(), 1 - decay)

    @torch.no_grad()
    def averaged_copies(self) -> list[nn.Module]:
        """Deep copies of the modules holding the averages (training goes on untouched)."""
        copies = [copy.deepcopy(m) for m in self.modules]
        for module, shadow in zip(copies, self.shadow):
            for name, p in module.named_parameters():
                p.copy_(shadow[name])
        return copies

    @torch.no_grad()
    def copy_to_modules(self) -> None:
        """Overwrite the modules' parameters with the averages (at the end of training)."""
        for module, shadow in zip(self.modules, self.shadow):
            for name, p in module.named_parameters():
                p.copy_(shadow[name])
