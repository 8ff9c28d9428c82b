"""Image upscalers: Lanczos, Nearest, and model files dropped into the upscaler folders.

Names are A1111's: "None", "Lanczos", "Nearest", and each model file by its stem
(`4x-UltraSharp.pth` -> "4x-UltraSharp"), found in `models/ESRGAN/` and the other
folders A1111 uses (`RealESRGAN/`, `SwinIR/`, `DAT/`, `HAT/`, `ScuNET/`, `BSRGAN/`).
Files are read safely: safetensors by our header reader, pickles (.pth/.pt/.ckpt)
through the allow-list unpickler, never unrestricted.

Which code runs a file (`build_model`):
1. spandrel in this process, when it imports here: every architecture it knows
   (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT, OmniSR, SPAN, ...).
2. Otherwise ESRGAN / Real-ESRGAN files (every key layout, `upscaler_models/keys.py`)
   run on our own `RRDBNet`, in process.
3. Otherwise other architectures run in the spandrel worker of the separate upscaler
   environment (`upscaler_models/remote.py`), when the bootstrap built one.
4. Otherwise: an `UpscalerError` naming the file and why spandrel is not available.

The registry keeps the last `cache_limit` loaded models (reloaded when the file
changes); the one on `runtime.upscalers` serves every job of the process.

`UpscalerRegistry.upscale(image, scale, name, settings)` follows A1111's `Upscaler`:
the target is `int(side * scale) // 8 * 8`; a model is applied (up to 3 times) until
the image is at least that big, then Lanczos brings it to the exact size. Models run
in tiles of `ESRGAN_tile` pixels overlapping by `ESRGAN_tile_overlap`, blended with
linear ramps across the overlaps so no seam shows.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from PIL import Image

from modules.models.errors import ModelLoadError
from modules.models.folders import walk_files
from modules.upscaling import spandrel_models
from modules.upscaling.files import MODEL_SUFFIXES, load_weights
from modules.upscaling.keys import config_from, layout, to_basicsr
from modules.upscaling.network import UpscaleModel, image_to_tensor, tensor_to_image, tiled_apply
from modules.upscaling.remote import RemoteModel, SpandrelWorker, WorkerError
from modules.upscaling.rrdbnet import RRDBNet

__all__ = ["BUILTIN", "MODEL_SUFFIXES", "SpandrelAccess", "UpscaleModel", "UpscalerError",
           "UpscalerInfo", "UpscalerRegistry", "build_model", "image_to_tensor", "load_weights",
           "tensor_to_image", "tiled_apply", "upscaler_python", "upscalers_of"]

BUILTIN = ("None", "Lanczos", "Nearest")
MAX_MODEL_PASSES = 3


class UpscalerError(ValueError):
    """An unknown upscaler name or a model file that cannot be used."""


class LoadedUpscaler(Protocol):
    scale: int
    arch: str

    def apply(self, image: Image.Image, *, tile: int, overlap: int) -> Image.Image: ...

    def release(self) -> None: ...


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of `/sdapi/v1/upscalers`."""

    name: str
    path: str | None = None
    scale: float | None = None


@dataclass
class SpandrelAccess:
    """How this process reaches spandrel: in process, through a worker, or not at all."""

    in_process: bool
    worker: SpandrelWorker | None
    reason: str  # why spandrel is not importable here ("" when it is)

    def unavailable(self) -> str:
        if self.worker is not None:
            return f"the upscaler worker at {self.worker.python} failed"
        return (f"{self.reason}, and there is no separate upscaler environment (the "
                "bootstrap builds .venv-upscalers unless --skip-upscaler-env is given; "
                "see --upscaler-python)")


def _rrdbnet(state: dict, path: Path, device: torch.device) -> UpscaleModel:
    try:
        state = to_basicsr(state)
        network = RRDBNet(config=config_from(state))
        network.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError, ValueError) as error:  # keys or shapes that do not fit
        raise UpscalerError(f"{path.name}: not a consistent ESRGAN file ({error})") from error
    network.eval().requires_grad_(False).to(device)
    return UpscaleModel(network=network, scale=network.scale, arch="ESRGAN",
                        device=torch.device(device))


def build_model(state: dict, path: Path, device: torch.device, *,
                spandrel: SpandrelAccess) -> LoadedUpscaler:
    """The network for a file's tensors, by the order in the module docstring."""
    if spandrel.in_process:
        try:
            return spandrel_models.load_spandrel(state, path, device)
        except spandrel_models.SpandrelError as error:
            raise UpscalerError(str(error)) from error
    if layout(state) is not None:
        return _rrdbnet(state, path, device)
    if spandrel.worker is None:
        raise UpscalerError(f"{path.name}: not an ESRGAN model, and other architectures "
                            f"need spandrel: {spandrel.unavailable()}")
    try:
        return RemoteModel.load(spandrel.worker, path)
    except WorkerError as error:
        message = str(error)  # the worker's own messages name the file already
        raise UpscalerError(message if message.startswith(path.name)
                            else f"{path.name}: {message}") from error


class UpscalerRegistry:
    """The upscalers of the upscaler folders, with the last few loaded models in memory.

    `spandrel_python` is the interpreter of the separate upscaler environment: its
    worker runs the architectures our RRDBNet does not cover when spandrel cannot be
    imported in this process. It is started on first use only.
    """

    def __init__(self, *, folders: Sequence[Path], device: torch.device | str = "cpu",
                 spandrel_python: Path | None = None, cache_limit: int = 2) -> None:
        self.folders = tuple(Path(folder) for folder in folders)
        self.device = torch.device(device)
        self.spandrel_python = Path(spandrel_python) if spandrel_python else None
        self.cache_limit = cache_limit
        self._models: OrderedDict[str, tuple[tuple, LoadedUpscaler]] = OrderedDict()
        self._spandrel: SpandrelAccess | None = None
        self._lock = threading.Lock()

    def model_files(self) -> list[Path]:
        """Model files of every folder; a name found twice keeps the first folder's."""
        found: dict[str, Path] = {}
        for folder in self.folders:  # links followed by the rule of models/folders.py
            for path in walk_files(folder, MODEL_SUFFIXES):
                found.setdefault(path.stem, path)
        return sorted(found.values(), key=lambda p: p.stem.lower())

    def list(self) -> list[UpscalerInfo]:
        builtins = [UpscalerInfo(name=name) for name in BUILTIN]
        return builtins + [UpscalerInfo(name=p.stem, path=str(p)) for p in self.model_files()]

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def spandrel(self) -> SpandrelAccess:
        """Probed once per registry: importing spandrel is not free, nor is failing to."""
        if self._spandrel is None:
            reason = spandrel_models.problem()
            worker = None
            if reason is not None and self.spandrel_python is not None:
                worker = SpandrelWorker(python=self.spandrel_python, device=str(self.device))
            self._spandrel = SpandrelAccess(in_process=reason is None, worker=worker,
                                            reason=reason or "")
        return self._spandrel

    def load(self, name: str) -> LoadedUpscaler:
        """The model called `name`, from the cache while its file is unchanged."""
        with self._lock:
            path = next((p for p in self.model_files() if p.stem == name), None)
            if path is None:
                raise UpscalerError(f"unknown upscaler {name!r}; available: "
                                    f"{', '.join(self.names())}")
            stat = path.stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
            cached = self._models.get(name)
            if cached is not None and cached[0] == stamp:
                self._models.move_to_end(name)
                return cached[1]
            model = self._build(path)
            self._models[name] = (stamp, model)
            self._models.move_to_end(name)
            while len(self._models) > self.cache_limit:
                self._models.popitem(last=False)[1][1].release()
            return model

    def _build(self, path: Path) -> LoadedUpscaler:
        try:
            state = load_weights(path)
        except (ModelLoadError, OSError) as error:
            raise UpscalerError(f"{path.name}: cannot read the file ({error})") from error
        return build_model(state, path, self.device, spandrel=self.spandrel())

    def cached_names(self) -> list[str]:
        """Names of the models held in memory, least recently used first."""
        with self._lock:
            return list(self._models)

    def run_model(self, image: Image.Image, name: str, settings) -> Image.Image:
        """One pass of a model over `image`, tiled as the settings say."""
        model = self.load(name)
        try:
            return model.apply(image, tile=settings.ESRGAN_tile,
                               overlap=settings.ESRGAN_tile_overlap)
        except WorkerError as error:
            raise UpscalerError(f"{name}: {error}") from error

    def close(self) -> None:
        """Stop the spandrel worker, if one was started."""
        if self._spandrel is not None and self._spandrel.worker is not None:
            self._spandrel.worker.close()

    def upscale(self, image: Image.Image, scale: float, name: str, settings) -> Image.Image:
        """A1111's `Upscaler.upscale` (see the module docstring)."""
        width, height = int(image.width * scale) // 8 * 8, int(image.height * scale) // 8 * 8
        if name in ("Lanczos", "Nearest", "None"):
            if name == "Nearest":
                image = image.resize((int(image.width * scale), int(image.height * scale)),
                                     resample=Image.Resampling.NEAREST)
        else:
            for _ in range(MAX_MODEL_PASSES):
                if image.width >= width and image.height >= height:
                    break
                size = image.size
                image = self.run_model(image, name, settings)
                if image.size == size:
                    break
        if image.size != (width, height):
            image = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        return image


def upscaler_python(args) -> Path | None:
    """`--upscaler-python`, else the bootstrap's `.venv-upscalers` interpreter if it exists."""
    from modules.app.bootstrap_upscalers import env_python
    from modules.paths import ROOT

    flag = getattr(args, "upscaler_python", None)
    if flag:
        return Path(flag)
    default = env_python(ROOT)  # bin/python, or Scripts\python.exe on Windows
    return default if default.exists() else None


def upscalers_of(runtime) -> UpscalerRegistry:
    """The runtime's registry (`Runtime.create` builds one, so loaded models are shared
    by every job), or a fresh one over its folders for a bare test runtime."""
    registry = getattr(runtime, "upscalers", None)
    if registry is not None:
        return registry
    return UpscalerRegistry(folders=runtime.paths.upscaler_dirs,
                            spandrel_python=upscaler_python(getattr(runtime, "args", None)))
