"""The Runtime: the one holder of process state, built by `launch.py` and passed around.

Settings, folders, the compute device, the model manager, the upscaler registry (with
its cache of loaded upscaler models, shared by every job) and the job queue live here
and nowhere else: no module keeps mutable globals. Tests build their own Runtime over
temporary folders.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modules.jobs import JobQueue
from modules.paths import Paths
from modules.settings import ClientAccess, Settings, load_settings, save_settings

VERSION = "v0.1.0"


class SettingsStore:
    """The saved settings, read as an immutable snapshot and replaced atomically."""

    def __init__(self, path: Path, *, frozen: bool = False, access: ClientAccess | None = None):
        self._path = path
        self._lock = threading.Lock()
        self._settings = load_settings(path)
        self._frozen = frozen
        self.access = access or ClientAccess(data_dir=path.parent, folders_locked=frozen)
        self.version = 0  # counts saved changes: a cluster's replicas adopt newer snapshots

    def snapshot(self) -> tuple[int, Settings]:
        """(version, settings), read together."""
        with self._lock:
            return self.version, self._settings

    def adopt(self, version: int, settings: Settings) -> None:
        """Make another process's snapshot current (a cluster replica; never saved here)."""
        with self._lock:
            if version >= self.version:  # a late job never rolls a replica back
                self.version, self._settings = version, settings

    @property
    def current(self) -> Settings:
        with self._lock:
            return self._settings

    def update(self, changes: Mapping[str, Any], *, origin: str = "api") -> Settings:
        """Validate a client's `changes` (`origin` "ui": the Settings tab; see
        `Settings.with_overrides`), save them to disk, then make them current."""
        if self._frozen:
            raise PermissionError("settings are frozen (--freeze-settings)")
        with self._lock:
            updated = self._settings.with_overrides(changes, access=self.access, origin=origin)
            save_settings(updated, self._path)
            self._settings = updated
            self.version += 1
            return updated

    def for_request(self, overrides: Mapping[str, Any]) -> Settings:
        """The current settings with a request's `override_settings` (checked, not saved)."""
        return self.current.with_overrides(overrides, access=self.access)


@dataclass
class Runtime:
    """Everything a request needs, passed explicitly."""

    args: Any
    paths: Paths
    settings: SettingsStore
    models: Any  # modules.models.manager.ModelManager
    networks: Any = None  # modules.networks.activate.NetworkRegistry (LoRA, embeddings)
    extensions: Any = None  # modules.extensions.registry.ExtensionRegistry (scripts, callbacks)
    upscalers: Any = None  # modules.upscaling.registry.UpscalerRegistry (loaded models cached)
    # modules.upscaling.interrogate.service.Interrogators, made on first use (interrogators_of)
    interrogators: Any = None
    jobs: JobQueue = field(default_factory=JobQueue)
    # Cluster mode: where generations run instead of `jobs` (modules.cluster.dispatch), and
    # the image writer the pipeline saves through (a replica records, its ingress writes).
    remote: Any = None
    saver: Any = None
    version: str = VERSION
    ready: threading.Event = field(default_factory=threading.Event)

    @staticmethod
    def create(args, settings: SettingsStore | None = None) -> "Runtime":
        """The process's Runtime from its flags; `settings`: a store other than config.json's
        (a cluster replica adopts its ingress's)."""
        from modules import devices
        from modules.models.manager import ModelManager

        paths = Paths.from_args(args)
        settings = settings or SettingsStore(
            paths.config_file, frozen=getattr(args, "freeze_settings", False),
            access=ClientAccess.from_args(args, paths.data_dir))
        device = devices.choose_device(args)
        compile_mode, messages = devices.compile_mode(args, device)
        from modules.models import openvino_unet

        backend, backend_line = devices.cpu_backend(args, device, openvino_unet.openvino_missing)
        messages.append(backend_line)
        for message in [*messages, *devices.precision_warnings(args, device)]:
            print(f"Easel: {message}")
        models = ModelManager(
            paths=paths,
            device=device,
            dtype=devices.choose_dtype(args, device),
            vae_dtype=devices.choose_vae_dtype(args, device),
            hashing=not getattr(args, "no_hashing", False),
            attention=devices.attention_backend(args),
            vae_path=getattr(args, "vae_path", None),
            cache_limit_source=lambda: settings.current.sd_checkpoints_limit,
            memory_policy=devices.memory_policy(args),
            channels_last=devices.use_channels_last(args, device),
            upcast_attention=devices.upcast_attention(args),
            compile_mode=compile_mode,
            unet_accelerator=openvino_unet.accelerator_factory(
                paths, int8_linears=getattr(args, "cpu_int8", False))
            if backend == "openvino" else None,
            precision=devices.precision_policy(args, device),
            modules_source=lambda: list(settings.current.forge_additional_modules),
            storage_source=lambda: settings.current.forge_unet_storage_dtype,
        )
        from modules.networks.activate import NetworkRegistry

        networks = NetworkRegistry.for_paths(paths, models.hash_cache)
        from modules.extensions.registry import ExtensionRegistry

        extensions = ExtensionRegistry.for_runtime(paths, settings, args)
        extensions.load(run_installers=not getattr(args, "skip_install", None))
        models.on_loaded.append(lambda loaded: extensions.call("model_loaded", loaded))
        from modules.upscaling.registry import UpscalerRegistry, upscaler_python

        use_cpu = set(getattr(args, "use_cpu", None) or [])
        upscalers = UpscalerRegistry(folders=paths.upscaler_dirs, device="cpu" if use_cpu & {
            "all", "esrgan"} else device, spandrel_python=upscaler_python(args))
        return Runtime(args=args, paths=paths, settings=settings, models=models,
                       networks=networks, extensions=extensions, upscalers=upscalers)
