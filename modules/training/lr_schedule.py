"""A1111's learning-rate schedule text: "0.005" or "0.005:100, 1e-3:1000, 1e-5".

Each comma-separated piece is `rate` or `rate:step`: the rate holds until the optimiser
has taken `step` steps, then the next piece takes over. A piece without a step (or with
step -1) runs to the end, so it may only come last. A schedule whose last piece has a
step ends training there, even when more steps were asked for (as in A1111).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from modules.errors import ParamsError


@dataclass(frozen=True)
class LearnRateSchedule:
    """(rate, until step) pieces; `until` None means "to the end of training"."""

    pieces: tuple[tuple[float, int | None], ...]

    def rate_at(self, step: int) -> float:
        """The rate for the optimiser step numbered `step` (0-based)."""
        for rate, until in self.pieces:
            if until is None or step < until:
                return rate
        return self.pieces[-1][0]

    def total_steps(self, requested: int) -> int:
        """How many steps training runs: `requested`, or fewer when the schedule ends first."""
        last_until = self.pieces[-1][1]
        return requested if last_until is None else min(requested, last_until)


def parse_learn_rate(text: str, *, field: str = "learn_rate") -> LearnRateSchedule:
    """Parse the schedule text; raises `ParamsError(field, reason)` on anything malformed."""
    if not isinstance(text, str) or not text.strip():
        raise ParamsError(field, "is empty; give a rate such as 0.005 or a schedule such as "
                                 "'0.005:100, 1e-3:1000'")
    pieces: list[tuple[float, int | None]] = []
    items = [item.strip() for item in text.split(",")]
    for index, item in enumerate(items):
        rate_text, _, step_text = item.partition(":")
        rate = _rate(rate_text.strip(), item, field)
        until = _until(step_text.strip(), item, field) if step_text.strip() else None
        if until is None and index != len(items) - 1:
            raise ParamsError(field, f"{item!r} has no step, so it must be the last piece")
        if until is not None and pieces and until <= (pieces[-1][1] or 0):
            raise ParamsError(field,
                              f"steps must increase, but {item!r} follows step {pieces[-1][1]}")
        pieces.append((rate, until))
    return LearnRateSchedule(tuple(pieces))


def _rate(text: str, item: str, field: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise ParamsError(field, f"{text!r} in {item!r} is not a number") from None
    if not math.isfinite(rate) or rate <= 0:
        raise ParamsError(field, f"rate {text!r} must be a positive finite number")
    return rate


def _until(text: str, item: str, field: str) -> int | None:
    try:
        step = int(text)
    except ValueError:
        raise ParamsError(field, f"step {text!r} in {item!r} is not a whole number") from None
    if step == -1:
        return None
    if step < 1:
        raise ParamsError(field, f"step {step} in {item!r} must be at least 1 (or -1: to the end)")
    return step
