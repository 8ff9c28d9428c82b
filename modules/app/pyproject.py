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

Easel needs Python 3.11+ (`launch.py` says so before anything else), whose standard library
parses TOML (`tomllib`).
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = "pyproject.toml"


def read(root: Path) -> dict:
    text = (root / PYPROJECT).read_text(encoding="utf-8")
    return tomllib.loads(text)


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
