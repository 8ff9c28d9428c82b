"""What the two outpainting scripts share: directions, margins, choice arguments.

A1111 clients send the direction list as `["left", "right", "up", "down"]` (any
subset, at least one) and "Masked content" as an index (0-3) or its label; both
are checked here so errors name the script's field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modules.scripts.args import ScriptArgsError

DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")


def parse_directions(script: str, value: Any) -> tuple[str, ...]:
    """The chosen directions in A1111's order; an empty or unknown choice is an error."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ScriptArgsError(script, "direction", f"expected a non-empty list of "
                                                   f"{list(DIRECTIONS)}, got {value!r}")
    chosen = []
    for item in value:
        name = item.lower() if isinstance(item, str) else item
        if name not in DIRECTIONS:
            raise ScriptArgsError(script, "direction", f"{item!r} is not one of "
                                                       f"{list(DIRECTIONS)}")
        chosen.append(name)
    return tuple(name for name in DIRECTIONS if name in chosen)


def choice_index(script: str, field: str, value: Any, labels: tuple[str, ...]) -> int:
    """An A1111 radio sent as its index (`type="index"`) or as its label."""
    if isinstance(value, str):
        lowered = [label.lower() for label in labels]
        if value.lower() in lowered:
            return lowered.index(value.lower())
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    raise ScriptArgsError(script, field, f"{value!r} is not one of {list(labels)} "
                                         f"(or their index 0-{len(labels) - 1})")


@dataclass(frozen=True)
class Margins:
    """New pixels on each side of the picture."""

    left: int = 0
    right: int = 0
    up: int = 0
    down: int = 0

    @staticmethod
    def of(directions: tuple[str, ...], pixels: int) -> "Margins":
        return Margins(**{name: pixels for name in directions})

    def grown(self, width: int, height: int) -> tuple[int, int]:
        return width + self.left + self.right, height + self.up + self.down

    def kept_box(self, width: int, height: int, inset: int = 0) -> tuple[int, int, int, int]:
        """The original's box on the grown canvas, shrunk by `inset` on the grown sides."""
        return (self.left + (inset if self.left else 0), self.up + (inset if self.up else 0),
                self.left + width - (inset if self.right else 0),
                self.up + height - (inset if self.down else 0))


def ceil8(value: int) -> int:
    return -(-value // 8) * 8
