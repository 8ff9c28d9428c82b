"""Typed conditioning data passed from `conditioning` to the samplers' CFG denoiser.

A prompt becomes a `Cond` (the cross-attention context and, for SDXL, the ADM vector).
Prompt editing (`[from:to:when]`, `[a|b]`) makes a `ScheduledCond`: a list of
`(end_at_step, Cond)` where the cond for step s is the first entry with s <= end_at_step.
Composable diffusion (`AND`) makes a `MultiCond`: weighted scheduled conds for one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Cond:
    """One encoded prompt for one image.

    crossattn: (tokens, channels), tokens a multiple of 77.
    vector: (adm_in_channels,) for SDXL (pooled text + size/crop embeddings), else None.
    """

    crossattn: torch.Tensor
    vector: torch.Tensor | None = None


@dataclass(frozen=True)
class ScheduledCond:
    """A prompt whose text changes over the sampling steps."""

    entries: tuple[tuple[int, Cond], ...]

    def at(self, step: int) -> Cond:
        """The cond in force at (1-based or 0-based, as the caller counts) `step`."""
        for end_at_step, cond in self.entries:
            if step <= end_at_step:
                return cond
        return self.entries[-1][1]

    @staticmethod
    def constant(cond: Cond) -> "ScheduledCond":
        return ScheduledCond(((1 << 31, cond),))


@dataclass(frozen=True)
class MultiCond:
    """The `AND`-separated parts of one positive prompt, each with its weight."""

    parts: tuple[tuple[ScheduledCond, float], ...]

    @staticmethod
    def single(cond: ScheduledCond) -> "MultiCond":
        return MultiCond(((cond, 1.0),))
