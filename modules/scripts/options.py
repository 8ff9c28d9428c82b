"""Typed settings declared by extensions, stored apart from the core `Settings`.

The core `Settings` is a frozen dataclass whose fields are fixed in code; extension
options are declared at load time (`ctx.add_option(ExtensionOption(...))`), so they
live in their own small store, `<data-dir>/extension_config.json`, written atomically
like `config.json`. Values are validated against the declaration (type, range,
choices) with errors naming the key; unknown keys in the file are kept untouched so
disabling an extension never loses its settings.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modules.scripts.args import ScriptArgsError, _coerce


class OptionError(ValueError):
    """An extension setting that cannot be accepted; the message names the key."""


@dataclass(frozen=True, kw_only=True)
class ExtensionOption:
    key: str
    default: Any
    label: str
    section: str = ""  # defaults to the extension's name
    choices: tuple | None = None
    minimum: float | None = None
    maximum: float | None = None


class ExtensionOptions:
    """Declared options and their saved values."""

    def __init__(self, path: Path | None):
        self._path = path
        self._lock = threading.Lock()
        self._declared: dict[str, ExtensionOption] = {}
        self._owner: dict[str, str] = {}
        self._values: dict[str, Any] = self._read()

    def _read(self) -> dict[str, Any]:
        if self._path is None or not self._path.is_file():
            return {}
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def declare(self, option: ExtensionOption, *, extension: str) -> None:
        if option.key in self._declared and self._owner[option.key] != extension:
            raise OptionError(f"{option.key}: already declared by {self._owner[option.key]}")
        section = option.section or extension
        self._declared[option.key] = ExtensionOption(**{**option.__dict__, "section": section})
        self._owner[option.key] = extension

    def declared(self) -> list[ExtensionOption]:
        return list(self._declared.values())

    def get(self, key: str) -> Any:
        option = self._declared.get(key)
        if option is None:
            raise OptionError(f"{key}: unknown extension setting")
        with self._lock:
            return self._values.get(key, option.default)

    def validate(self, key: str, value: Any) -> Any:
        option = self._declared.get(key)
        if option is None:
            raise OptionError(f"{key}: unknown extension setting")
        try:
            value = _coerce("setting", key, type(option.default).__name__, value)
        except ScriptArgsError as error:
            raise OptionError(f"{key}: {error.reason}") from error
        if option.choices and value not in option.choices:
            raise OptionError(f"{key}: {value!r} is not one of {list(option.choices)}")
        if option.minimum is not None and value < option.minimum:
            raise OptionError(f"{key}: {value} is below the minimum {option.minimum}")
        if option.maximum is not None and value > option.maximum:
            raise OptionError(f"{key}: {value} is above the maximum {option.maximum}")
        return value

    def update(self, changes: Mapping[str, Any]) -> None:
        """Validate every change first, then save them together."""
        checked = {key: self.validate(key, value) for key, value in changes.items()}
        with self._lock:
            self._values.update(checked)
            if self._path is not None:
                _write_atomic(self._path, self._values)


def _write_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=4, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
