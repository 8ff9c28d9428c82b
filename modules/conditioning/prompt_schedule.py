"""Prompt editing `[from:to:when]` and alternation `[a|b]`: a small recursive-descent parser.

A1111 describes this syntax with a Lark grammar; we parse the same language by hand
(no lark dependency) and evaluate it the same way:

    start      := (prompt | stray)*          stray = one of `[ ] ( ) :` outside constructs
    prompt     := (emphasized | scheduled | alternate | plain | whitespace)*
    emphasized := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled  := "[" [prompt ":"] prompt ":" ws? NUMBER ws? "]"
    alternate  := "[" prompt ("|" prompt?)+ "]"
    plain      := (any char but `\\ [ ] ( ) : |`, or `\\` + any char but newline)+

Emphasis brackets are kept verbatim (the attention parser reads them later); only the
scheduled and alternate constructs are resolved per step. A prompt that has no parse
(a `|` outside `[...]`, a dangling backslash) is used verbatim for every step.

`when` is resolved into an integer step (see `StepResolver`); a scheduled construct
shows `from` while `step <= when`, then `to`. Alternation shows option
`(step - 1) % len(options)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# SIGNED_NUMBER of Lark's common grammar: an int, a decimal, optional exponent.
NUMBER_PATTERN = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
WHITESPACE_PATTERN = re.compile(r"\s+")
SPECIAL_CHARS = "\\[]():|"
STRAY_CHARS = "[]():"


@dataclass(frozen=True)
class Scheduled:
    """`[before:after:when]`; `before` is None for the two-part form `[after:when]`."""

    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class Alternate:
    """`[a|b|...]`: one option per step, cycling."""

    options: tuple


class PromptSyntaxError(ValueError):
    """The prompt is not in the schedule language; it is then used verbatim."""


class _Parser:
    """Recursive descent with backtracking over one prompt string.

    A node list holds plain strings, `Scheduled` and `Alternate`; emphasis brackets are
    plain strings. Nested parsers return `None` instead of raising so that the top
    level can fall back to reading an opening bracket as a stray literal.
    """

    def __init__(self, text: str) -> None:
        self.text = text

    def parse(self) -> tuple:
        nodes, pos = [], 0
        while pos < len(self.text):
            seq, pos = self.sequence(pos)
            nodes.extend(seq)
            if pos >= len(self.text):
                break
            char = self.text[pos]
            # Outside any construct, lone brackets and colons are literal text.
            if char in STRAY_CHARS:
                nodes.append(char)
                pos += 1
                continue
            raise PromptSyntaxError(f"unexpected {char!r} at {pos}")
        return tuple(nodes)

    def sequence(self, pos: int) -> tuple[list, int]:
        """Read `prompt` items until a character that a prompt cannot hold."""
        nodes: list = []
        while pos < len(self.text):
            char = self.text[pos]
            if char in "([":
                parsed = self.construct(pos)
                if parsed is None:
                    break
                node, pos = parsed
                if isinstance(node, list):
                    nodes.extend(node)
                else:
                    nodes.append(node)
                continue
            end = self.plain_end(pos)
            if end == pos:
                break
            nodes.append(self.text[pos:end])
            pos = end
        return nodes, pos

    def plain_end(self, pos: int) -> int:
        """End of the run of plain characters (and backslash escapes) starting at `pos`."""
        text = self.text
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                if pos + 1 >= len(text) or text[pos + 1] == "\n":
                    break
                pos += 2
            elif char in SPECIAL_CHARS:
                break
            else:
                pos += 1
        return pos

    def construct(self, pos: int):
        """Parse a bracketed construct at `pos`, or return None."""
        if self.text[pos] == "(":
            return self.round(pos)
        return self.square(pos)

    def round(self, pos: int):
        # "(" prompt ")" or "(" prompt ":" prompt ")": kept as literal text around the parts.
        inner, pos = self.sequence(pos + 1)
        if self.peek(pos) == ")":
            return ["(", *inner, ")"], pos + 1
        if self.peek(pos) != ":":
            return None
        weight, pos = self.sequence(pos + 1)
        if self.peek(pos) != ")":
            return None
        return ["(", *inner, ":", *weight, ")"], pos + 1

    def square(self, pos: int):
        first, pos = self.sequence(pos + 1)
        nxt = self.peek(pos)
        # "[" prompt "]": de-emphasis, kept as literal text.
        if nxt == "]":
            return ["[", *first, "]"], pos + 1
        if nxt == "|":
            return self.alternate(tuple(first), pos)
        if nxt == ":":
            return self.scheduled(tuple(first), pos + 1)
        return None

    def alternate(self, first: tuple, pos: int):
        options = [first]
        while self.peek(pos) == "|":
            option, pos = self.sequence(pos + 1)
            options.append(tuple(option))
        if self.peek(pos) != "]":
            return None
        return Alternate(tuple(options)), pos + 1

    def scheduled(self, first: tuple, pos: int):
        # "[after:when]" (first is `after`) ...
        when = self.when_and_close(pos)
        if when is not None:
            return Scheduled(None, first, when[0]), when[1]
        # ... or "[before:after:when]".
        after, pos = self.sequence(pos)
        if self.peek(pos) != ":":
            return None
        when = self.when_and_close(pos + 1)
        if when is None:
            return None
        return Scheduled(first, tuple(after), when[0]), when[1]

    def when_and_close(self, pos: int):
        """`ws? NUMBER ws? "]"` at `pos`: the number's text and the position after `]`."""
        pos = self.skip_whitespace(pos)
        number = NUMBER_PATTERN.match(self.text, pos)
        if number is None:
            return None
        pos = self.skip_whitespace(number.end())
        if self.peek(pos) != "]":
            return None
        return number.group(0), pos + 1

    def skip_whitespace(self, pos: int) -> int:
        match = WHITESPACE_PATTERN.match(self.text, pos)
        return match.end() if match else pos

    def peek(self, pos: int) -> str:
        return self.text[pos] if pos < len(self.text) else ""


def parse_schedule(text: str) -> tuple:
    """The node tree of `text`; raises `PromptSyntaxError` when it has no parse."""
    return _Parser(text).parse()


@dataclass(frozen=True, kw_only=True)
class StepResolver:
    """Turns a `when` literal into an integer step, A1111's way.

    New scheduling: an integer literal is an absolute step, a literal with "." a
    fraction; in a hires pass integers are offset by `int_offset` (the base steps) and
    fractions by `float_offset` (1.0). Old scheduling: v < 1 is a fraction, else a step.
    The result is truncated toward zero and capped at `steps`.
    """

    steps: int
    int_offset: int = 0
    float_offset: float = 0.0
    old_scheduling: bool = False

    def __call__(self, literal: str) -> int:
        value = float(literal)
        if self.old_scheduling:
            value = value * self.steps if value < 1 else value
        elif "." in literal:
            value = (value - self.float_offset) * self.steps
        else:
            value = value - self.int_offset
        return min(self.steps, int(value))


def boundaries(nodes: tuple, resolve: StepResolver) -> list[int]:
    """Sorted steps at which the text may change (always including the last step)."""
    found = {resolve.steps}
    for node in nodes:
        if isinstance(node, Scheduled):
            when = resolve(node.when)
            # Steps below 1 never happen, so they are no boundary.
            if when >= 1:
                found.add(when)
            found.update(boundaries(node.before or (), resolve))
            found.update(boundaries(node.after, resolve))
        elif isinstance(node, Alternate):
            found.update(range(1, resolve.steps + 1))
            for option in node.options:
                found.update(boundaries(option, resolve))
    return sorted(found)


def render(nodes: tuple, step: int, resolve: StepResolver) -> str:
    """The prompt text in force at `step`."""
    parts = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, Scheduled):
            chosen = (node.before or ()) if step <= resolve(node.when) else node.after
            parts.append(render(chosen, step, resolve))
        else:
            parts.append(render(node.options[(step - 1) % len(node.options)], step, resolve))
    return "".join(parts)


def schedule_prompt(text: str, resolve: StepResolver) -> list[tuple[int, str]]:
    """`[(end_at_step, text), ...]` for one prompt; verbatim when it does not parse."""
    try:
        nodes = parse_schedule(text)
    except PromptSyntaxError:
        return [(resolve.steps, text)]
    return [(step, render(nodes, step, resolve)) for step in boundaries(nodes, resolve)]
