"""The shape of `modules/`: rooms by purpose, each saying what it may import.

These checks read the source only (no imports), so a file that moves into the wrong
room, a backend module that reaches up into `webui/`, or a file that outgrows 400 lines
fails here with the path named.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "modules"
MAX_TOP_LEVEL_FILES = 12
MAX_LINES = 400

# Which other rooms each room may import (top-level modules such as settings, jobs,
# devices, paths, errors and infotext are below every room and always allowed, except
# where a room is stricter). Each room's `__init__.py` docstring says the same in words.
BASE = {"settings", "jobs", "devices", "paths", "errors", "infotext", "styles"}
ALLOWED: dict[str, set[str]] = {
    "nn": set(),
    "imaging": set(),
    "sampling": {"nn", "conditioning"},
    "conditioning": {"nn", "models"},
    "networks": {"nn", "models", "conditioning"},
    "models": {"nn", "conditioning", "sampling", "networks", "imaging"},
    "extensions": {"scripts"},
    "upscaling": {"models", "imaging", "app"},
    "scripts": {"pipeline", "sampling", "imaging", "upscaling", "nn"},
    "pipeline": {"conditioning", "sampling", "networks", "models", "nn", "imaging",
                 "upscaling", "scripts"},
    "training": {"nn", "models", "networks", "conditioning", "sampling", "pipeline",
                 "runtime", "app", "imaging"},
    "api": {"app", "extensions", "imaging", "models", "networks", "pipeline", "sampling",
            "scripts", "training", "upscaling"},
    "app": {"api", "extensions", "runtime", "cluster"},
    "cluster": {"pipeline", "imaging", "models", "runtime", "app"},
}
# Rooms stricter than BASE: the model code knows nothing of settings, jobs or files.
STRICT = {"nn": {"devices"}, "imaging": {"paths", "errors", "infotext", "settings"}}


def module_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in a file, including lazy ones in functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            if node.module == "modules":  # `from modules import x` names a room
                found += [(node.lineno, f"modules.{a.name}") for a in node.names]
    return found


def room_of(path: Path, base: Path = MODULES) -> str:
    parts = path.relative_to(base).parts
    return parts[0] if len(parts) > 1 else parts[0].removesuffix(".py")


def python_files() -> list[Path]:
    return sorted(MODULES.rglob("*.py"))


def test_top_level_holds_at_most_a_dozen_files():
    files = sorted(p.name for p in MODULES.glob("*.py"))
    assert len(files) <= MAX_TOP_LEVEL_FILES, files


def test_every_room_says_what_lives_there_and_what_it_may_import():
    for init in sorted(MODULES.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 30, f"{init.relative_to(ROOT)}: docstring too short"
        assert re.search(r"May import", doc), f"{init.relative_to(ROOT)}: no 'May import'"


def test_nothing_under_modules_imports_webui_or_gradio():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {name}"
           for p in python_files() for line, name in module_imports(p)
           if name.split(".")[0] in {"webui", "gradio"}]
    assert not bad, "\n".join(bad)


def test_no_file_under_modules_is_over_400_lines():
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in python_files()
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "\n".join(long)


def room_violations(files: list[Path], base: Path = MODULES) -> list[str]:
    """Imports of one room from another that `ALLOWED` does not list."""
    bad = []
    for path in files:
        room = room_of(path, base)
        if room not in ALLOWED:
            continue
        allowed = ALLOWED[room] | STRICT.get(room, BASE)
        for line, name in module_imports(path):
            parts = name.split(".")
            if parts[0] != "modules" or len(parts) < 2 or parts[1] == room:
                continue
            if parts[1] not in allowed:
                bad.append(f"{path.relative_to(base)}:{line} ({room}) imports {name}")
    return bad


def test_rooms_import_only_what_their_docstring_allows():
    assert not room_violations(python_files()), "\n".join(room_violations(python_files()))


def test_the_room_check_catches_an_upward_import(tmp_path):
    probe = tmp_path / "nn" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("def f():\n    from modules.pipeline.params import ParamsError\n")
    assert room_violations([probe], tmp_path) == [
        "nn/probe.py:2 (nn) imports modules.pipeline.params"]


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_every_declared_room_exists(room):
    assert (MODULES / room / "__init__.py").is_file() or (MODULES / f"{room}.py").is_file()
