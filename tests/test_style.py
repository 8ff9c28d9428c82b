"""Style checks that run: `ruff check .` over the whole tree must pass.

The rule set and line length live in pyproject.toml (`[tool.ruff]`); ruff itself is pinned
in the `test` extra, so this test fails (never skips) where it is missing.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean() -> None:
    assert importlib.util.find_spec("ruff") is not None, (
        "ruff is not installed in this environment: install the test extras "
        "(`python3 launch.py --run-tests` sets them up; they pin ruff) to run the style check"
    )
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"ruff check found problems (exit {result.returncode}); fix them or wrap the lines:\n"
        f"{result.stdout}{result.stderr}"
    )
