"""Prompt styles from `styles.csv` (A1111's format: name, prompt, negative_prompt).

A style's text is merged into the prompt: a `{prompt}` placeholder is replaced by the
user's prompt, otherwise the style is appended after ", ". The file is read on every
call (it is small and users edit it by hand); a missing file means no styles.
`save_style` / `delete_style` rewrite it atomically (a temporary file, then a rename),
so a crash never leaves half a file.
"""

from __future__ import annotations

import csv
import os
import tempfile
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


def save_style(path: Path, style: PromptStyle) -> list[PromptStyle]:
    """Add `style`, or replace the one with its name (kept in place); returns all styles."""
    name = style.name.strip()
    if not name:
        raise ValueError("a style needs a name")
    style = PromptStyle(name=name, prompt=style.prompt, negative_prompt=style.negative_prompt)
    styles = load_styles(path)
    names = [s.name for s in styles]
    if name in names:
        styles[names.index(name)] = style
    else:
        styles.append(style)
    _write_styles(path, styles)
    return styles


def delete_style(path: Path, name: str) -> list[PromptStyle]:
    """Remove the named style; returns the remaining styles."""
    styles = load_styles(path)
    if name not in [s.name for s in styles]:
        raise StyleError(name, [s.name for s in styles])
    styles = [s for s in styles if s.name != name]
    _write_styles(path, styles)
    return styles


def _write_styles(path: Path, styles: Sequence[PromptStyle]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "prompt", "negative_prompt"])
            for style in styles:
                writer.writerow([style.name, style.prompt, style.negative_prompt])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
