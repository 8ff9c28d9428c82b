"""CFG at scale 1 for SD3.x / Flux.1: the negative rows are not run when they cancel out."""

from __future__ import annotations

import torch

from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.sampling.cfg import CFGDenoiser


def scheduled(value: float) -> ScheduledCond:
    return ScheduledCond.constant(Cond(torch.full((3, 4), value), torch.full((2,), value)))


def guided(scale: float, parts=None, *, skip: bool = True):
    rows = []

    def denoiser(x, sigma, *, context, y, c_concat=None):
        rows.append(context[:, 0, 0].tolist())
        return x * 0 + context[:, 0, 0].view(-1, 1, 1, 1)  # each row: its cond's value

    conds = [MultiCond(parts or ((scheduled(1.0), 1.0),))]
    cfg = CFGDenoiser(denoiser, conds, [scheduled(-1.0)], scale, total_steps=1,
                      skip_uncond_at_scale_one=skip)
    out = cfg(torch.zeros(1, 1, 2, 2), torch.ones(1))
    return out, rows


def test_scale_one_runs_the_positive_rows_only():
    out, rows = guided(1.0)
    assert rows == [[1.0]]
    reference, every = guided(1.0, skip=False)
    assert every == [[1.0, -1.0]]
    torch.testing.assert_close(out, reference)


def test_other_scales_and_weighted_parts_keep_the_negative_rows():
    assert guided(4.5)[1] == [[1.0, -1.0]]
    two_parts = ((scheduled(1.0), 1.0), (scheduled(2.0), 0.5))
    assert guided(1.0, two_parts)[1] == [[1.0, 2.0, -1.0]]
