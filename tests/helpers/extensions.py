"""Runtimes over temporary data folders holding copies of tests/fixtures_extensions/."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.helpers.api_runtime import make_runtime

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures_extensions"


def install_fixtures(data: Path, *names: str) -> Path:
    root = data / "extensions"
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (root / name).exists():
            shutil.copytree(FIXTURES / name, root / name)
    return root


def runtime_with(data: Path, names: tuple[str, ...], *flags: str):
    """A Runtime (tiny checkpoints alpha/beta) with the named fixture extensions."""
    install_fixtures(data, *names)
    return make_runtime(data, *flags)
