"""File-level work on one extension folder: metadata.ini, install.py, preload.py, scripts.

Folder conventions are A1111's (docs/a1111-semantics.md, "Extension folders"). Modules are imported
with importlib under unique names (`easel_ext.<extension>.<file>`), with the extension folder on
`sys.path` only while its own files execute, so sibling imports work and nothing
leaks into other extensions. `install.py` runs in a subprocess once per change of
its content: a marker file in the extension folder records the hash it ran for.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib.util
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

log = logging.getLogger(__name__)

INSTALL_MARKER = ".easel-installed"
INSTALL_TIMEOUT_S = 1800


@dataclass(frozen=True)
class Metadata:
    """`metadata.ini`'s [Extension] section (missing file: the folder name, no requires)."""

    name: str
    requires: tuple[str, ...] = ()
    raw: dict[str, dict[str, str]] = field(default_factory=dict)


def read_metadata(folder: Path) -> Metadata:
    path = folder / "metadata.ini"
    if not path.is_file():
        return Metadata(name=folder.name)
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path, encoding="utf-8")
    raw = {section: dict(parser[section]) for section in parser.sections()}
    section = raw.get("Extension", {})
    requires = tuple(part.strip() for part in section.get("requires", "").split(",")
                     if part.strip())
    return Metadata(name=section.get("name", folder.name), requires=requires, raw=raw)


def module_name(extension: str, path: Path) -> str:
    """A unique, importable module name for one file of one extension."""
    clean = lambda text: re.sub(r"\W", "_", text)  # noqa: E731
    return f"easel_ext.{clean(extension)}.{clean(path.stem)}"


@contextmanager
def on_sys_path(folder: Path):
    """`folder` first on sys.path while the block runs; removed afterwards."""
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        try:
            sys.path.remove(entry)
        except ValueError:
            pass


def import_file(path: Path, *, name: str, folder: Path) -> ModuleType:
    """Import one file as module `name`; on error nothing is left in sys.modules."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        with on_sys_path(folder):
            spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def script_files(folder: Path) -> list[Path]:
    scripts = folder / "scripts"
    if not scripts.is_dir():
        return []
    return sorted(p for p in scripts.iterdir() if p.suffix == ".py" and p.is_file())


def install_hash(folder: Path) -> str | None:
    path = folder / "install.py"
    if not path.is_file():
        return None
    digest = hashlib.sha256(path.read_bytes())
    requirements = folder / "requirements.txt"
    if requirements.is_file():
        digest.update(requirements.read_bytes())
    return digest.hexdigest()


def run_installer(folder: Path, *, root: Path) -> str | None:
    """Run `install.py` if it changed since its last successful run; return an error or None."""
    wanted = install_hash(folder)
    marker = folder / INSTALL_MARKER
    if wanted is None or (marker.is_file() and marker.read_text().strip() == wanted):
        return None
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))}
    log.info("Running install.py of %s", folder.name)
    try:
        done = subprocess.run([sys.executable, str(folder / "install.py")], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"install.py could not run: {error}"
    for line in (done.stdout + done.stderr).splitlines():
        log.info("[%s install] %s", folder.name, line)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [""]
        return f"install.py exited with {done.returncode}: {tail[0]}"
    marker.write_text(wanted + "\n")
    return None


def preload_function(folder: Path, extension: str) -> Callable | None:
    """The `preload(parser)` function of `folder/preload.py`, if any (errors propagate)."""
    path = folder / "preload.py"
    if not path.is_file():
        return None
    module = import_file(path, name=module_name(extension, Path("preload")), folder=folder)
    return getattr(module, "preload", None)
