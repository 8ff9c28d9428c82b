"""User settings: one frozen dataclass, persisted to `config.json`, copied per request.

Declared in parts (`declare.py`: `opt` and the sections; `base.py`: the core options;
`tools.py`: the built-in tools' options; `core.py`: `Settings`, access, validation,
the file), re-exported here: `from modules.settings import Settings`.

Each field carries metadata (label, section, infotext key, allowed values or range)
so the Settings tab, the API's `/sdapi/v1/options` and infotext pasting are generated
from one place. Setting names are A1111's, because API clients send them in
`override_settings` and `/options`.

Requests never change the shared settings: `settings.with_overrides({...})` returns a
validated copy. Fields declared with `guard=` (the URL-request policy, output folders)
are refused there for clients unless `ClientAccess` (from the flags) allows it.
Saving writes a temporary file and renames it over `config.json`, so a
crash mid-write never loses the previous file.

May import: `modules.paths` only (every room reads settings; settings read no room).
"""

from modules.settings.core import (
    ClientAccess,
    Settings,
    check_guarded,
    load_settings,
    save_settings,
    validate,
)
from modules.settings.declare import (
    FOLDER,
    POLICY,
    SettingsError,
    SettingsForbidden,
    opt,
)

__all__ = ["FOLDER", "POLICY", "ClientAccess", "Settings", "SettingsError", "SettingsForbidden",
           "check_guarded", "load_settings", "opt", "save_settings", "validate"]
