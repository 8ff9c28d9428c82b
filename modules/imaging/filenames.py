"""File names that every desktop accepts: Windows' rules applied everywhere.

Outputs, embeddings and merged checkpoints are copied between machines, and a name
Linux accepts can be one Windows refuses or silently changes:

* the characters `< > : " / \\ | ? *` and control characters (0-31, 127);
* device names, whatever their case and extension: `CON`, `PRN`, `AUX`, `NUL`,
  `COM0`-`COM9`, `LPT0`-`LPT9` (and their superscript-digit forms), `CONIN$`, `CONOUT$`:
  `con.txt` opens the console, not a file;
* a trailing dot or space (Windows drops it, so `a.` and `a` are one file);
* more than 255 UTF-16 units per name on Windows, 255 bytes on Linux and macOS.

So the rules are applied on every OS: a name made here is valid on all three.
"""

from __future__ import annotations

import re

WINDOWS_INVALID_CHARS = '<>:"/\\|?*'
MAX_NAME_BYTES = 255  # NAME_MAX of ext4/APFS, in UTF-8 bytes; Windows' 255 UTF-16 units is looser
RESERVED_STEMS: frozenset[str] = frozenset({
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
    *(f"{prefix}{digit}" for prefix in ("COM", "LPT") for digit in "0123456789¹²³"),
})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def replace_invalid_chars(text: str, replacement: str = "_", *,
                          extra: str = "") -> str:
    """Windows' reserved characters (path separators included) and `extra` become
    `replacement`; control characters are dropped."""
    text = _CONTROL.sub("", text)
    return "".join(replacement if ch in WINDOWS_INVALID_CHARS or ch in extra else ch
                   for ch in text)


def is_reserved_name(name: str) -> bool:
    """`CON`, `nul.txt`, `Com1.tar.gz`, `aux .png`: a Windows device name, with any case
    and extension (Windows ignores the spaces before the dot too)."""
    stem = name.split(".", 1)[0].rstrip(" ")
    return stem.upper() in RESERVED_STEMS


def truncate_utf8(text: str, max_bytes: int) -> str:
    """At most `max_bytes` of UTF-8, never cutting a character in two."""
    return text.encode("utf-8")[:max(max_bytes, 0)].decode("utf-8", errors="ignore")


def safe_name(name: str, *, replacement: str = "_", max_bytes: int = MAX_NAME_BYTES,
              suffix: str = "", fallback: str = "unnamed") -> str:
    """`name` + `suffix` as one file name valid on Windows, macOS and Linux.

    Invalid characters become `replacement`, the stem loses trailing dots and spaces,
    is cut so the whole fits in `max_bytes`, and gets a `_` in front when it is a
    device name. `suffix` (".safetensors") is kept whole; an empty stem is `fallback`.
    """
    stem = replace_invalid_chars(name, replacement).strip(" ")
    stem = truncate_utf8(stem, max_bytes - len(suffix.encode("utf-8")) - 1).rstrip(" .")
    if not stem or stem in (".", ".."):
        stem = fallback
    if is_reserved_name(stem + suffix):
        stem = "_" + stem
    return stem + suffix
