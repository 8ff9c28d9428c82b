"""The prompt language of A1111, read into plain data.

One prompt goes through these steps (A1111's order, see docs/a1111-semantics.md,
"Prompt processing order"): comments are stripped, extra-network tags `<lora:name:0.8>` are pulled
out, positive prompts are split on `AND` into weighted sub-prompts, each sub-prompt is expanded into
a step schedule (`[from:to:when]`, `[a|b]`; parsed in `modules/conditioning/prompt_schedule.py`),
and each scheduled text is read for emphasis `(word:1.2)` and `BREAK`.

The public functions keep A1111's names and return shapes (lists, not tuples), because
extensions call them: `parse_prompt_attention`, `get_learned_conditioning_prompt_schedules`,
`get_multicond_prompt_list`. Typed equivalents are offered beside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from modules.conditioning.prompt_schedule import StepResolver, schedule_prompt

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0

# One lexical item of the emphasis language, in priority order.
_ATTENTION_TOKEN = re.compile(
    r"(?P<escape>\\[()\[\]\\])"
    r"|(?P<backslash>\\)"
    r"|(?P<open>[(\[])"
    r"|(?P<weight>:\s*(?P<number>[+-]?[.\d]+)\s*\))"
    r"|(?P<close>[)\]])"
    r"|(?P<text>[^\\()\[\]:]+|:)"
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_AND = re.compile(r"\bAND\b")
# A sub-prompt's trailing ":weight" (e.g. "a cat :1.2"); surrounding space is dropped.
_SUBPROMPT_WEIGHT = re.compile(r"\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+))\s*$")
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_WHOLE_LINE_COMMENT = re.compile(r"(?:^|\n)#[^\n]*(?:\n|$)")
_INLINE_COMMENT = re.compile(r"#[^\n]*(?:\n|$)")


# ---------------------------------------------------------------------------------------
# Emphasis: "(word)", "[word]", "(word:1.3)", escapes and BREAK.
# ---------------------------------------------------------------------------------------


def parse_prompt_attention(text: str) -> list[list]:
    """Split `text` into `[text, weight]` pairs; `["BREAK", -1]` marks a chunk break.

    `(x)` multiplies by 1.1, `[x]` by 1/1.1, `(x:w)` by w; nesting multiplies, brackets
    left open apply to the end, unmatched closers are literal, `\\(` etc. are escapes.
    Equal neighbouring weights are merged. A `(x:w)` whose w is not a number
    (e.g. `..`) is read as text (A1111 raises there).
    """
    segments: list[list] = []
    open_round: list[int] = []
    open_square: list[int] = []
    for match in _ATTENTION_TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group(0)
        if kind == "number":
            kind = "weight"
        if kind == "escape":
            segments.append([token[1], 1.0])
        elif kind == "backslash":
            segments.append(["", 1.0])
        elif kind == "open":
            (open_round if token == "(" else open_square).append(len(segments))
        elif kind == "weight" and open_round and _is_float(match.group("number")):
            _multiply_from(segments, open_round.pop(), float(match.group("number")))
        elif token == ")" and open_round:
            _multiply_from(segments, open_round.pop(), ROUND_MULTIPLIER)
        elif token == "]" and open_square:
            _multiply_from(segments, open_square.pop(), SQUARE_MULTIPLIER)
        else:
            _append_text(segments, token)
    # Brackets never closed apply to everything after them.
    for start in open_round:
        _multiply_from(segments, start, ROUND_MULTIPLIER)
    for start in open_square:
        _multiply_from(segments, start, SQUARE_MULTIPLIER)
    return _merge_equal_weights(segments or [["", 1.0]])


def _is_float(literal: str) -> bool:
    try:
        float(literal)
    except ValueError:
        return False
    return True


def _multiply_from(segments: list[list], start: int, multiplier: float) -> None:
    for segment in segments[start:]:
        segment[1] *= multiplier


def _append_text(segments: list[list], text: str) -> None:
    """Append plain text, turning each whole-word `BREAK` into a break marker."""
    for index, part in enumerate(_BREAK.split(text)):
        if index > 0:
            segments.append(["BREAK", BREAK_WEIGHT])
        segments.append([part, 1.0])


def _merge_equal_weights(segments: list[list]) -> list[list]:
    merged = [segments[0]]
    for text, weight in segments[1:]:
        if merged[-1][1] == weight:
            merged[-1][0] += text
        else:
            merged.append([text, weight])
    return merged


# ---------------------------------------------------------------------------------------
# Prompt editing schedules.
# ---------------------------------------------------------------------------------------


def step_resolver(base_steps: int, hires_steps: int | None = None,
                  use_old_scheduling: bool = False) -> StepResolver:
    """How `when` literals map to steps for a first pass or (with `hires_steps`) a hires pass."""
    if hires_steps is None or use_old_scheduling:
        return StepResolver(steps=base_steps, old_scheduling=use_old_scheduling)
    return StepResolver(steps=hires_steps, int_offset=base_steps, float_offset=1.0)


def get_learned_conditioning_prompt_schedules(
    prompts: list[str], base_steps: int, hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list]]:
    """For each prompt, `[[end_at_step, text], ...]` (A1111's shape and name)."""
    resolve = step_resolver(base_steps, hires_steps, use_old_scheduling)
    by_prompt = {prompt: schedule_prompt(prompt, resolve) for prompt in set(prompts)}
    return [[[step, text] for step, text in by_prompt[prompt]] for prompt in prompts]


# ---------------------------------------------------------------------------------------
# Composable diffusion: "a cat :1.2 AND a dog".
# ---------------------------------------------------------------------------------------


def split_and_weights(prompt: str) -> list[tuple[str, float]]:
    """The `AND`-separated sub-prompts of `prompt`, each with its `:weight` (default 1)."""
    parts = []
    for subprompt in _AND.split(prompt):
        match = _SUBPROMPT_WEIGHT.search(subprompt)
        if match is None:
            parts.append((subprompt.rstrip(), 1.0))
        else:
            parts.append((subprompt[: match.start()], float(match.group(1))))
    return parts


def get_multicond_prompt_list(prompts: list[str]):
    """A1111's `(res_indexes, prompt_flat_list, prompt_indexes)` for a batch of prompts.

    `prompt_flat_list` holds each distinct sub-prompt once; `res_indexes[i]` lists
    `(index into prompt_flat_list, weight)` for prompt i; `prompt_indexes` maps a
    sub-prompt to its index.
    """
    res_indexes: list[list[tuple[int, float]]] = []
    prompt_flat_list: list[str] = []
    prompt_indexes: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for text, weight in split_and_weights(prompt):
            if text not in prompt_indexes:
                prompt_indexes[text] = len(prompt_flat_list)
                prompt_flat_list.append(text)
            indexes.append((prompt_indexes[text], weight))
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list, prompt_indexes


# ---------------------------------------------------------------------------------------
# Extra-network tags and comments.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One `<name:arg:key=value...>` tag: `positional` and `named` arguments as text."""

    name: str
    positional: tuple[str, ...]
    named: dict[str, str] = field(default_factory=dict)

    @property
    def items(self) -> list[str]:
        """All arguments in order, as A1111's `ExtraNetworkParams.items`."""
        return [*self.positional, *(f"{k}={v}" for k, v in self.named.items())]


def _tag_from_args(name: str, args: str) -> ExtraNetworkTag:
    positional, named = [], {}
    for item in args.split(":"):
        parts = item.split("=", 2)
        # Exactly one "=" makes a named argument; "a=b=c" stays positional.
        if len(parts) == 2:
            named[parts[0]] = parts[1]
        else:
            positional.append(item)
    return ExtraNetworkTag(name, tuple(positional), named)


def extract_extra_networks(prompt: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove every `<name:args>` tag; return the cleaned text and the tags in order."""
    tags: list[ExtraNetworkTag] = []

    def take(match: re.Match) -> str:
        tags.append(_tag_from_args(match.group(1), match.group(2)))
        return ""

    return _EXTRA_NETWORK.sub(take, prompt), tags


def strip_comments(text: str) -> str:
    """Drop `#` comments: whole-line ones, then the rest of any line after a `#`."""
    text = _WHOLE_LINE_COMMENT.sub("\n", text)
    return _INLINE_COMMENT.sub("\n", text)
