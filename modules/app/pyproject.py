"""Easel's dependency lists, read from `pyproject.toml`, the one place they are kept.

Standard library only: `launch.py` reads them before anything is installed.

- `[project].dependencies`: the app (torch there is only a floor: the torch policy of
  `bootstrap` keeps an installed torch or installs `[tool.easel].torch`).
- `[project.optional-dependencies]`: `test` (the suite's extras), `cuda` (xformers, never
  installed by launch.py), `upscalers` (torchvision + spandrel tried in the app's venv).
- `[tool.easel]`: `torch`, the pin installed when no torch is present and pip's find-links
  hold no torch wheel; `upscaler-env`, the exact pins of the separate `.venv-upscalers/`.
  That list is no extra on purpose: installed into the app's venv it would replace torch.

`python3 -m modules.app.pyproject EXTRA ...` prints those extras' lists, one per line, so
`.venv/bin/pip install -c .venv/torch-constraint.txt $(python3 -m modules.app.pyproject test)`
adds the test extras by hand, keeping `.venv`'s torch (`pip install -e .` does not work:
Easel runs from its checkout and is not packaged).

Python 3.11+ parses with `tomllib`; Python 3.10 has none, so a small reader of the TOML
this file uses (tables; strings and arrays of strings; other values skipped) stands in.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None

PYPROJECT = "pyproject.toml"


def read(root: Path) -> dict:
    text = (root / PYPROJECT).read_text(encoding="utf-8")
    return tomllib.loads(text) if tomllib is not None else parse_subset(text)


def requirement_name(spec: str) -> str:
    """`"huggingface-hub==2.4.0"` -> `"huggingface-hub"` (lower case, `_` as `-`)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    return match.group(1).lower().replace("_", "-") if match else spec


def dependencies(root: Path, *extras: str) -> list[str]:
    """`[project].dependencies`, then each named extra's list, in that order."""
    project = read(root)["project"]
    optional = project.get("optional-dependencies", {})
    specs = list(project["dependencies"])
    for extra in extras:
        specs += optional[extra]
    return specs


def easel(root: Path) -> dict:
    """The `[tool.easel]` table."""
    return read(root)["tool"]["easel"]


def parse_subset(text: str) -> dict:
    """The tables of a TOML document with their string and string-array values."""
    data: dict = {}
    table = data
    lines = iter(text.splitlines())
    for raw in lines:
        line = _uncomment(raw).strip()
        if line.startswith("[["):
            table = {}  # arrays of tables: not needed, skipped
        elif line.startswith("["):
            table = data
            for part in line.strip("[]").split("."):
                table = table.setdefault(part.strip().strip('"'), {})
        elif "=" in line:
            key, value = (piece.strip() for piece in line.split("=", 1))
            while value.startswith("[") and _depth(value) > 0:
                value += " " + _uncomment(next(lines)).strip()
            parsed = _value(value)
            if parsed is not None:
                table[key.strip('"')] = parsed
    return data


_STRING = r'"(?:[^"\\]|\\.)*"'


def _uncomment(line: str) -> str:
    """The line without a `#` comment (a `#` inside a string is kept)."""
    return re.match(rf'(?:{_STRING}|[^"#])*', line).group(0)


def _depth(value: str) -> int:
    bare = re.sub(_STRING, "", value)
    return bare.count("[") - bare.count("]")


def _value(value: str):
    if re.fullmatch(_STRING, value):
        return json.loads(value)
    if re.fullmatch(r"\[[\s,]*\]", re.sub(_STRING, "", value)):
        return [json.loads(item) for item in re.findall(_STRING, value)]
    return None


def main(argv: list[str]) -> int:
    optional = read(Path(__file__).resolve().parents[2])["project"]["optional-dependencies"]
    unknown = [extra for extra in argv if extra not in optional]
    if not argv or unknown:
        print(f"usage: python3 -m modules.app.pyproject EXTRA ... (extras: {', '.join(optional)})",
              file=sys.stderr)
        return 2
    print("\n".join(spec for extra in argv for spec in optional[extra]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
