"""`Settings` (every option), client access rules, validation and the config.json file."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from modules.paths import login_configured, serves_only_locally
from modules.settings.base import BaseOptions
from modules.settings.declare import FOLDER, SettingsError, SettingsForbidden
from modules.settings.tools import ToolOptions


@dataclass(frozen=True)
class Settings(ToolOptions, BaseOptions):
    """Every user-facing option: the core ones first, then the tools' (field order is the
    order of the Settings tab and `/options`)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def describe(cls, name: str) -> Mapping[str, Any]:
        return cls.__dataclass_fields__[name].metadata

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_overrides(self, overrides: Mapping[str, Any], *, access: ClientAccess | None = None,
                       origin: str = "api") -> "Settings":
        """A validated copy with a client's `overrides` applied; the original is untouched.

        Every client route (API options and `override_settings`, infotext, the UI) comes
        through here: a guarded setting given a new value is refused unless `access`
        allows it (`check_guarded`). Values equal to the current ones are no change.
        """
        if not overrides:
            return self
        changes = {name: validate(name, value) for name, value in overrides.items()}
        for name, value in changes.items():
            if getattr(self, name) != value:
                check_guarded(name, value, access or ClientAccess(), origin)
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ClientAccess:
    """Which guarded settings clients may change; built once from the flags.

    `allow_guarded`: `--allow-api-protected-settings`; `folders_locked`:
    `--hide-ui-dir-config` or `--freeze-settings`; `data_dir`: where folders set through
    the API must resolve. Defaults allow no change to any guarded setting.
    """

    data_dir: Path | None = None
    allow_guarded: bool = False
    folders_locked: bool = False
    ui_is_operator: bool = True  # see `from_args`

    @staticmethod
    def from_args(args, data_dir: Path) -> "ClientAccess":
        # The UI is the operator's page (A1111) only where no stranger can reach it: on a
        # local-only server or behind a login. Otherwise its events are client requests.
        return ClientAccess(data_dir=data_dir,
                            allow_guarded=bool(getattr(args, "allow_api_protected_settings", 0)),
                            folders_locked=bool(getattr(args, "hide_ui_dir_config", False)
                                                or getattr(args, "freeze_settings", False)),
                            ui_is_operator=serves_only_locally(args) or login_configured(args))


def check_guarded(name: str, value: Any, access: ClientAccess, origin: str) -> None:
    """Refuse a change to a guarded setting (403), or a folder outside the data dir (422).

    `origin` "ui" is the Settings tab and the top bar: where the UI is the operator's page
    (`ClientAccess.ui_is_operator`) only `folders_locked` applies there; on a server open to
    others without a login the UI gets a client's rules. Anything else is a client.
    """
    guard = Settings.describe(name).get("guard")
    if guard is None:
        return
    if guard == FOLDER and access.folders_locked:
        raise SettingsForbidden(f"{name}: folder settings are locked "
                                "(--hide-ui-dir-config or --freeze-settings)")
    if origin == "ui" and access.ui_is_operator:
        return
    if not access.allow_guarded:
        raise SettingsForbidden(f"{name}: cannot be changed through the API "
                                "(the server allows it with --allow-api-protected-settings)")
    if guard == FOLDER:
        base = (access.data_dir or Path.cwd()).resolve()
        target = (base / value).resolve()  # an absolute value replaces the base
        if not target.is_relative_to(base):
            raise SettingsError(f"{name}: {value!r} is outside the data directory")


def validate(name: str, value: Any) -> Any:
    """Check one setting value against its declaration; return it converted to its type."""
    if name not in Settings.__dataclass_fields__:
        raise SettingsError(f"{name}: unknown setting")
    spec = Settings.__dataclass_fields__[name]
    value = _coerce(name, spec.type, value)
    meta = spec.metadata
    if meta.get("choices") and isinstance(value, tuple):  # a list setting: each item
        unknown = [item for item in value if item not in meta["choices"]]
        if unknown:
            raise SettingsError(f"{name}: {unknown[0]!r} is not one of {list(meta['choices'])}")
    elif meta.get("choices") and value not in meta["choices"]:
        raise SettingsError(f"{name}: {value!r} is not one of {list(meta['choices'])}")
    if meta.get("minimum") is not None and value < meta["minimum"]:
        raise SettingsError(f"{name}: {value} is below the minimum {meta['minimum']}")
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise SettingsError(f"{name}: {value} is above the maximum {meta['maximum']}")
    if name == "disabled_extensions":
        _check_name_list(name, value)
    return value


def _check_name_list(name: str, value: str) -> None:
    """A JSON list of strings (extension names)."""
    try:
        names = json.loads(value)
    except ValueError as error:
        raise SettingsError(f"{name}: not valid JSON ({error})") from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SettingsError(f"{name}: expected a JSON list of extension names, got {value!r}")


def _coerce(name: str, type_name: Any, value: Any) -> Any:
    kind = type_name if isinstance(type_name, str) else type_name.__name__
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{name}: expected true or false, got {value!r}")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise SettingsError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if kind == "tuple":
        return _name_tuple(name, value)
    if not isinstance(value, str):
        raise SettingsError(f"{name}: expected a string, got {value!r}")
    return value


MAX_LIST_ITEMS = 16


def _name_tuple(name: str, value: Any) -> tuple[str, ...]:
    """A list of names (`forge_additional_modules`' file names, skipped categories) as a
    tuple."""
    if not isinstance(value, (list, tuple)) or len(value) > MAX_LIST_ITEMS or not all(
            isinstance(item, str) and 0 < len(item) <= 256 for item in value):
        raise SettingsError(f"{name}: expected a list of at most {MAX_LIST_ITEMS} file names, "
                            f"got {str(value)[:100]!r}")
    return tuple(value)


def load_settings(path: Path) -> Settings:
    """Read `config.json`; unknown keys (other programs' or removed options) are ignored.

    A value that fails validation is reported and its default kept, so one bad entry
    never stops the app from starting.
    """
    if not path.exists():
        return Settings()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise SettingsError(f"{path}: cannot read settings ({error})") from error
    if not isinstance(data, dict):
        raise SettingsError(f"{path}: expected a JSON object")
    known = {k: v for k, v in data.items() if k in Settings.__dataclass_fields__}
    accepted = {}
    for name, value in known.items():
        try:
            accepted[name] = validate(name, value)
        except SettingsError as error:
            print(f"Ignoring setting from {path}: {error}")
    return dataclasses.replace(Settings(), **accepted)  # the operator's own file: trusted


def save_settings(settings: Settings, path: Path) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(settings.to_dict(), indent=4, ensure_ascii=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
