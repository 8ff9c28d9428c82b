"""Extensions: discovery, loading, enable/disable, and the registry held on the Runtime.

An extension is a folder `extensions/<name>/` (built-in, beside `modules/`) or
`<data-dir>/extensions/<name>/` (user-installed), laid out as in A1111 (docs/a1111-semantics.md,
"Extension folders"): `scripts/*.py`, `install.py`, `preload.py`, `javascript/*.js`, `style.css`,
`metadata.ini`, and, Easel's addition, `ui.py` for Gradio parts (imported by
`webui/` only, so `modules/` never pulls gradio in).

A scripts module contributes `Script` subclasses (found by scanning the module) and
may define `setup(ctx: ExtensionContext)`, called once at load, to register global
callbacks and declare settings. Nothing is registered at import time through
globals. A module that raises at import or in `setup` is logged, listed with its
error, and skipped; the others still load. Enable/disable is the setting
`disabled_extensions` (a JSON list of names), applied at once to scripts and
callbacks (new files and install.py take a restart).
"""

from __future__ import annotations

import inspect
import json
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.scripts import loader
from modules.scripts.base import Script
from modules.scripts.callbacks import CallbackRegistry
from modules.scripts.options import ExtensionOption, ExtensionOptions

log = logging.getLogger(__name__)


@dataclass
class Extension:
    """One extension folder and what loading it gave."""

    name: str
    path: Path
    builtin: bool
    metadata: loader.Metadata
    enabled: bool = True
    errors: list[str] = field(default_factory=list)
    scripts: list[Script] = field(default_factory=list)

    def git_info(self) -> dict[str, str | None]:
        return read_git_info(self.path)

    def files(self, pattern: str) -> list[Path]:
        return sorted(self.path.glob(pattern))


@dataclass
class ExtensionContext:
    """What an extension's `setup(ctx)` gets: its folder and the registration points."""

    name: str
    path: Path
    registry: "ExtensionRegistry"

    @property
    def paths(self):
        """The Runtime's folders (`modules.paths.Paths`; None for a registry built without)."""
        return self.registry.paths

    def on(self, callback: str, fn: Callable) -> None:
        """Register a global callback (`modules.scripts.callbacks.CALLBACK_NAMES`)."""
        self.registry.callbacks.add(callback, fn, extension=self.name)

    def add_option(self, option: ExtensionOption) -> None:
        """Declare a typed setting shown in its own section of the settings."""
        self.registry.options.declare(option, extension=self.name)


def read_git_info(folder: Path) -> dict[str, str | None]:
    """remote, branch and commit from `.git` files (no subprocess; None when not a clone)."""
    info: dict[str, str | None] = {"remote": None, "branch": None, "commit_hash": None}
    git = folder / ".git"
    head = git / "HEAD"
    if not head.is_file():
        return info
    text = head.read_text().strip()
    if text.startswith("ref:"):
        ref = text[4:].strip()
        info["branch"] = ref.rsplit("/", 1)[-1]
        ref_file = git / ref
        info["commit_hash"] = ref_file.read_text().strip() if ref_file.is_file() else None
    else:
        info["commit_hash"] = text
    config = git / "config"
    if config.is_file():
        for line in config.read_text().splitlines():
            if line.strip().startswith("url ="):
                info["remote"] = line.split("=", 1)[1].strip()
                break
    return info


def discover(roots: Sequence[tuple[Path, bool]]) -> list[Extension]:
    """Extension folders under each (root, builtin) in name order, then by `Requires`."""
    found: list[Extension] = []
    for root, builtin in roots:
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir(), key=lambda p: p.name.lower()):
            if folder.is_dir() and not folder.name.startswith((".", "_")):
                found.append(Extension(name=folder.name, path=folder, builtin=builtin,
                                       metadata=loader.read_metadata(folder)))
    return order_by_requires(found)


def order_by_requires(extensions: list[Extension]) -> list[Extension]:
    """Each extension after the ones its metadata.ini `Requires`; a missing one is an error."""
    by_name = {ext.name: ext for ext in extensions}
    by_name.update({ext.metadata.name: ext for ext in extensions})
    ordered: list[Extension] = []
    visiting: set[str] = set()

    def visit(ext: Extension) -> None:
        if ext in ordered or ext.name in visiting:
            return
        visiting.add(ext.name)
        for need in ext.metadata.requires:
            if need in by_name:
                visit(by_name[need])
            else:
                ext.errors.append(f"requires extension {need!r}, which is not installed")
        ordered.append(ext)

    for ext in extensions:
        visit(ext)
    return ordered


def disabled_names(settings) -> set[str]:
    try:
        return set(json.loads(getattr(settings, "disabled_extensions", "[]") or "[]"))
    except (TypeError, ValueError):
        return set()


def extension_roots(paths) -> list[tuple[Path, bool]]:
    """(folder, builtin) pairs: the repository's extensions/ first, then the data dir's."""
    dirs = list(paths.extensions_dirs)
    return [(Path(d), i == 0) for i, d in enumerate(dirs)]


def preload_hooks(roots: Sequence[tuple[Path, bool]], *, disable_all: bool = False,
                  disable_extra: bool = False) -> list[Callable]:
    """Every enabled extension's `preload(parser)`; a broken preload.py is logged, skipped."""
    hooks = []
    for ext in discover(roots):
        if disable_all or (disable_extra and not ext.builtin):
            continue
        try:
            fn = loader.preload_function(ext.path, ext.name)
        except Exception as error:
            log.error("preload.py of %s failed: %s", ext.name, error)
            continue
        if fn is not None:
            hooks.append(fn)
    return hooks


def scripts_in(module) -> list[type[Script]]:
    """Script subclasses defined in `module` (not the ones it imported)."""
    return [obj for obj in vars(module).values()
            if inspect.isclass(obj) and issubclass(obj, Script) and obj is not Script
            and obj.__module__ == module.__name__ and not inspect.isabstract(obj)]


def load_scripts(ext: Extension, registry: "ExtensionRegistry") -> None:
    """Import each scripts/*.py of `ext`; a failing file is recorded and skipped."""
    context = ExtensionContext(name=ext.name, path=ext.path, registry=registry)
    for path in loader.script_files(ext.path):
        where = f"{ext.name}/scripts/{path.name}"
        try:
            module = loader.import_file(path, name=loader.module_name(ext.name, path),
                                        folder=ext.path)
            if callable(getattr(module, "setup", None)):
                module.setup(context)
            for cls in scripts_in(module):
                script = cls()
                script.filename, script.extension = str(path), ext.name
                script.context = context
                ext.scripts.append(script)
        except Exception as error:  # an extension's bug must not take the app down
            message = f"{where}: {type(error).__name__}: {error}"
            log.error("Extension %s failed to load: %s\n%s", ext.name, message,
                      traceback.format_exc())
            ext.errors.append(message)


class ScriptNotFound(LookupError):
    """`script_name` or an `alwayson_scripts` key that names no usable script."""


class ExtensionRegistry:
    """Every extension, script, callback and extension setting of one Runtime."""

    def __init__(self, *, roots: Sequence[tuple[Path, bool]], settings=None, args=None,
                 options_path: Path | None = None, builtins: Sequence[Script] = (),
                 paths=None):
        self.roots = list(roots)
        self.paths = paths  # modules.paths.Paths, offered to extensions as `ctx.paths`
        self.settings = settings  # modules.runtime.SettingsStore (for disabled_extensions)
        self.args = args
        self.callbacks = CallbackRegistry()
        self.options = ExtensionOptions(options_path)
        self.builtin_scripts = list(builtins)
        self.extensions: list[Extension] = []

    @staticmethod
    def for_runtime(paths, settings, args) -> "ExtensionRegistry":
        from modules.scripts.builtin import builtin_scripts

        return ExtensionRegistry(roots=extension_roots(paths), settings=settings, args=args,
                                 options_path=paths.data_dir / "extension_config.json",
                                 builtins=builtin_scripts(), paths=paths)

    # ------------------------------------------------------------ loading
    def _flag(self, name: str) -> bool:
        return bool(getattr(self.args, name, False))

    def _skipped_by_flags(self, ext: Extension) -> bool:
        mode = getattr(self.settings.current, "disable_all_extensions", "none") \
            if self.settings else "none"
        if self._flag("disable_all_extensions") or mode == "all":
            return True
        return not ext.builtin and (self._flag("disable_extra_extensions") or mode == "extra")

    def load(self, *, run_installers: bool = True) -> None:
        """Discover, install (once per change) and import every enabled extension."""
        self.extensions = discover(self.roots)
        disabled = self.disabled()
        for ext in self.extensions:
            ext.enabled = ext.name not in disabled and not self._skipped_by_flags(ext)
            if not ext.enabled or any("requires" in e for e in ext.errors):
                continue
            if run_installers:
                error = loader.run_installer(ext.path, root=Path(__file__).resolve().parents[2])
                if error:
                    ext.errors.append(error)
            load_scripts(ext, self)

    def disabled(self) -> set[str]:
        return disabled_names(self.settings.current) if self.settings else set()

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Persist the choice in `disabled_extensions`; scripts and callbacks follow at once."""
        if name not in {ext.name for ext in self.extensions}:
            raise KeyError(f"no extension named {name!r}")
        names = self.disabled() - {name} if enabled else self.disabled() | {name}
        self.settings.update({"disabled_extensions": json.dumps(sorted(names))})
        for ext in self.extensions:
            if ext.name == name:
                ext.enabled = enabled

    def active(self, ext_name: str) -> bool:
        return not ext_name or any(e.name == ext_name and e.enabled for e in self.extensions)

    # ------------------------------------------------------------ scripts
    def scripts(self) -> list[Script]:
        loaded = [s for ext in self.extensions if ext.enabled for s in ext.scripts]
        return [*self.builtin_scripts, *loaded]

    def selectable(self, is_img2img: bool) -> list[Script]:
        return [s for s in self.scripts() if _safe_show(s, is_img2img) is True]

    def alwayson(self, is_img2img: bool) -> list[Script]:
        from modules.scripts.base import AlwaysVisible

        return [s for s in self.scripts() if _safe_show(s, is_img2img) is AlwaysVisible]

    def find_selectable(self, title: str, is_img2img: bool) -> Script:
        for script in self.selectable(is_img2img):
            if script.title().lower() == title.strip().lower():
                return script
        raise ScriptNotFound(f"Script '{title}' not found")

    def script_run(self, *, alwayson_args: dict, is_img2img: bool, warnings: list[str]):
        """The job's always-on scripts with parsed args (errors name script and field)."""
        from modules.scripts.args import parse_args
        from modules.scripts.run import ScriptRun

        wanted = {key.strip().lower(): value for key, value in (alwayson_args or {}).items()}
        selectable = {s.title().lower() for s in self.selectable(is_img2img)}
        scripts = []
        for script in self.alwayson(is_img2img):
            entry = wanted.pop(script.title().lower(), None)
            payload = entry.get("args") if isinstance(entry, dict) and "args" in entry else entry
            scripts.append((script, parse_args(script.Args, payload, script=script.title())))
        for key in wanted:
            if key in selectable:
                raise ScriptNotFound("Cannot have a selectable script in the always on "
                                     "scripts params")
            raise ScriptNotFound(f"always on script {key} not found")
        return ScriptRun(scripts=scripts, callbacks=self._active_callbacks(), warnings=warnings)

    def _active_callbacks(self) -> CallbackRegistry:
        view = CallbackRegistry(errors=self.callbacks.errors)
        for name, entries in self.callbacks.callbacks.items():
            view.callbacks[name] = [cb for cb in entries if self.active(cb.extension)]
        return view

    def call(self, name: str, *args: Any) -> list[Any]:
        """Run a global callback for enabled extensions (app_started, model_loaded, ...)."""
        return self._active_callbacks().call(name, *args)

    # ------------------------------------------------------------ page assets
    def javascript_files(self) -> list[Path]:
        return [p for ext in self.extensions if ext.enabled
                for p in [*ext.files("javascript/*.js"), *ext.files("javascript/*.mjs")]]

    def css_files(self) -> list[Path]:
        return [ext.path / "style.css" for ext in self.extensions
                if ext.enabled and (ext.path / "style.css").is_file()]

    def ui_modules(self) -> list[tuple[Extension, Path]]:
        return [(ext, ext.path / "ui.py") for ext in self.extensions
                if ext.enabled and (ext.path / "ui.py").is_file()]

    def describe(self) -> list[dict[str, Any]]:
        """`/sdapi/v1/extensions` items, plus Easel's `builtin` and `errors`."""
        return [{"name": ext.name, **ext.git_info(), "version": None, "commit_date": None,
                 "enabled": ext.enabled, "builtin": ext.builtin, "errors": list(ext.errors)}
                for ext in self.extensions]


def _safe_show(script: Script, is_img2img: bool):
    try:
        return script.show(is_img2img)
    except Exception as error:
        log.error("show() of %s failed: %s", type(script).__name__, error)
        return False
