"""Prompt styles from `styles.csv` (A1111's format: name, prompt, negative_prompt).

A style's text is merged into the prompt: a `{prompt}` placeholder is replaced by the
user's prompt, otherwise the style is appended after ", ". The file is read on every
call (it is small and users edit it by hand); a missing file means no styles.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class StyleError(ValueError):
    """A style name that is not in the styles file."""

    def __init__(self, name: str, known: Sequence[str]):
        listed = ", ".join(known) if known else "none are defined"
        super().__init__(f"style {name!r} not found (known styles: {listed})")
        self.name = name


@dataclass(frozen=True)
class PromptStyle:
    name: str
    prompt: str
    negative_prompt: str


def load_styles(path: Path) -> list[PromptStyle]:
    """Every style in `path`, in file order; [] when the file does not exist."""
    if not path.is_file():
        return []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [PromptStyle(name=(row.get("name") or "").strip(), prompt=row.get("prompt") or "",
                        negative_prompt=row.get("negative_prompt") or "")
            for row in rows if (row.get("name") or "").strip()]


def merge_style(prompt: str, style_text: str) -> str:
    if not style_text:
        return prompt
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return f"{prompt}, {style_text}" if prompt else style_text


def apply_styles(prompt: str, negative_prompt: str, names: Sequence[str],
                 styles: Sequence[PromptStyle]) -> tuple[str, str]:
    """Prompt and negative prompt with the named styles merged in, in the given order."""
    by_name = {style.name: style for style in styles}
    for name in names:
        style = by_name.get(name)
        if style is None:
            raise StyleError(name, list(by_name))
        prompt = merge_style(prompt, style.prompt)
        negative_prompt = merge_style(negative_prompt, style.negative_prompt)
    return prompt, negative_prompt
