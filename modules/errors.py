"""The one error type for input a user or client sent: it names the field and the reason.

Every layer raises it (request validation, model merging, upscaling options, training
options); the API turns it into a 422 and the UI into a message naming the widget.
It lives here, below every room, so that no lower layer imports the pipeline for it.
"""

from __future__ import annotations

from typing import Any


class ParamsError(ValueError):
    """A request field that cannot be accepted."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason


def require_number(name: str, value: Any, low: float, high: float) -> None:
    """Refuse a value that is not a number (bools included) or lies outside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(name, f"expected a number, got {value!r}")
    if not low <= value <= high:
        raise ParamsError(name, f"{value} is outside [{low}, {high}]")
