"""One check for the benchmark scripts that need the `test` extras of pyproject.toml.

A plain `python3 launch.py` installs the app's dependencies only; the comparisons against
diffusers need the test extras too. A script calls `require_test_extras(__file__, ...)`
before it imports them and, when one is missing, stops with one line saying how to get
them, and exit code 2, instead of a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HOW = ("run `python3 launch.py --run-tests` once (it also runs the test suite), or "
       "`.venv/bin/pip install -c .venv/torch-constraint.txt "
       "$(python3 -m modules.app.pyproject test)`")


def missing(*modules: str) -> list[str]:
    """The modules of `modules` that cannot be imported here."""
    absent = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent


def require_test_extras(script: str, *modules: str) -> None:
    """Exit 2 with one line on stderr when a test extra that `script` needs is missing."""
    absent = missing(*modules)
    if absent:
        print(f"{Path(script).name} needs the test extras ({', '.join(absent)} missing): {HOW}",
              file=sys.stderr)
        raise SystemExit(2)
