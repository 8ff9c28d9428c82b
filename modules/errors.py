"""The one error type for input a user or client sent: it names the field and the reason.

Every layer raises it (request validation, model merging, upscaling options, training
options); the API turns it into a 422 and the UI into a message naming the widget.
It lives here, below every room, so that no lower layer imports the pipeline for it.
"""

from __future__ import annotations

import os
import re
from typing import Any

# A run of characters starting with "/" that is not part of a word, URL or relative path.
_PATH_LIKE = re.compile(r"(?<![\w.:/\\~-])/[^\s'\"<>|]+")


class ParamsError(ValueError):
    """A request field that cannot be accepted."""

    def __init__(self, field_name: str, reason: str):
        super().__init__(f"{field_name}: {reason}")
        self.field = field_name
        self.reason = reason

    def __reduce__(self):  # rebuilt from its fields when sent between processes (cluster)
        return type(self), (self.field, self.reason)


class Unavailable(RuntimeError):
    """A worker the request needed went away (a cluster replica that died mid-job, a cluster
    that failed to start): HTTP 503, with the cause in the message."""


def require_number(name: str, value: Any, low: float, high: float) -> None:
    """Refuse a value that is not a number (bools included) or lies outside [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParamsError(name, f"expected a number, got {value!r}")
    if not low <= value <= high:
        raise ParamsError(name, f"{value} is outside [{low}, {high}]")


def without_paths(text: str) -> str:
    """`text` with absolute server paths cut to their last part (`/srv/models/x.ckpt` ->
    `x.ckpt`), for messages sent to clients. Only paths whose top folder exists on this
    machine are cut, so URL paths such as `/sdapi/v1/txt2img` stay as written."""
    def shorten(match: re.Match) -> str:
        found = match.group(0)
        path = found.rstrip(".,;:)]}'\"")
        parts = path.strip("/").split("/")
        if not os.path.exists(path) and not os.path.isdir("/" + parts[0]):
            return found
        return parts[-1] + found[len(path):]

    return _PATH_LIKE.sub(shorten, text)
