"""Image upscalers: Lanczos, Nearest, and model files dropped into `models/ESRGAN/`.

Names are A1111's: "None", "Lanczos", "Nearest", and each model file by its stem
(`4x-UltraSharp.pth` -> "4x-UltraSharp"). ESRGAN and Real-ESRGAN files (every key
layout, see `upscaler_models/keys.py`) run on our own `RRDBNet`; other architectures
(SwinIR, DAT, HAT, ...) go through the optional `spandrel` package, imported only
when such a file is used. Files are read safely: safetensors by our header reader,
pickles (.pth/.pt/.ckpt) through the allow-list unpickler, never unrestricted.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from modules.models.errors import ModelLoadError
from modules.upscaler_models.keys import config_from, layout, to_basicsr, unwrap
from modules.upscaler_models.rrdbnet import RRDBNet

BUILTIN = ("None", "Lanczos", "Nearest")
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")
MAX_MODEL_PASSES = 3


class UpscalerError(ValueError):
    """An unknown upscaler name or a model file that cannot be used."""


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of `/sdapi/v1/upscalers`."""

    name: str
    path: str | None = None
    scale: float | None = None


@dataclass
class UpscaleModel:
    """A loaded network: (B, 3, H, W) in [0, 1] -> (B, 3, H * scale, W * scale)."""

    network: Callable[[torch.Tensor], torch.Tensor]
    scale: int


def load_weights(path: Path) -> dict:
    """Tensors of a model file, safely, unwrapped from `params_ema` / `params`."""
    from modules.models.safe_unpickle import load_pickle_checkpoint
    from modules.models.single_file import file_format, load_file

    if file_format(path) == "safetensors":
        return load_file(path)
    loaded = load_pickle_checkpoint(path, mmap=False)
    if not isinstance(loaded, dict):
        raise ModelLoadError(str(path), f"not a state dict ({type(loaded).__name__})")
    return unwrap(loaded)


def build_model(state: dict, path: Path, device: torch.device) -> UpscaleModel:
    """RRDBNet for ESRGAN layouts, spandrel for anything else."""
    if layout(state) is not None:
        state = to_basicsr(state)
        network = RRDBNet(config=config_from(state))
        network.load_state_dict(state, strict=True)
        network.eval().requires_grad_(False).to(device)
        return UpscaleModel(network=network, scale=network.scale)
    try:
        import spandrel
    except ImportError as error:
        raise UpscalerError(
            f"{path.name}: not an ESRGAN model; other architectures need the optional "
            "package 'spandrel' (pip install spandrel, which needs a torchvision matching "
            "the installed torch)") from error
    descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(state)
    descriptor.eval()
    return UpscaleModel(network=descriptor, scale=int(descriptor.scale))


def _ramp(length: int, overlap: int, start: bool, end: bool) -> torch.Tensor:
    """Weights along one axis: linear ramps over the overlapping ends."""
    weights = torch.ones(length)
    ramp = torch.linspace(0, 1, overlap + 2)[1:-1] if overlap > 0 else torch.ones(0)
    if start and overlap:
        weights[:overlap] = ramp
    if end and overlap:
        weights[-overlap:] = ramp.flip(0)
    return weights


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


@torch.no_grad()
def tiled_apply(network, x: torch.Tensor, *, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """`network(x)` computed in overlapping tiles, blended (tile 0 = in one piece)."""
    height, width = x.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return network(x)
    overlap = min(overlap, tile // 2)
    out = torch.zeros(x.shape[0], 3, height * scale, width * scale)
    total = torch.zeros(1, 1, height * scale, width * scale)
    ys, xs = _starts(height, tile, tile - overlap), _starts(width, tile, tile - overlap)
    for y in ys:
        for x0 in xs:
            patch = x[..., y:y + tile, x0:x0 + tile]
            result = network(patch).float().cpu()
            h, w = result.shape[-2:]
            weight = (_ramp(h, overlap * scale, y > 0, y + tile < height)[:, None]
                      * _ramp(w, overlap * scale, x0 > 0, x0 + tile < width)[None, :])
            out[..., y * scale:y * scale + h, x0 * scale:x0 * scale + w] += result * weight
            total[..., y * scale:y * scale + h, x0 * scale:x0 * scale + w] += weight
    return out / total


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    array = x[0].float().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array))


class UpscalerRegistry:
    """The upscalers of one folder, with the last few loaded models kept in memory."""

    def __init__(self, *, folder: Path, device: torch.device | str = "cpu",
                 cache_limit: int = 2) -> None:
        self.folder = Path(folder)
        self.device = torch.device(device)
        self.cache_limit = cache_limit
        self._models: OrderedDict[str, tuple[tuple, UpscaleModel]] = OrderedDict()
        self._lock = threading.Lock()

    def model_files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.rglob("*")
                       if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES),
                      key=lambda p: p.stem.lower())

    def list(self) -> list[UpscalerInfo]:
        builtins = [UpscalerInfo(name=name) for name in BUILTIN]
        return builtins + [UpscalerInfo(name=p.stem, path=str(p)) for p in self.model_files()]

    def names(self) -> list[str]:
        return [info.name for info in self.list()]

    def load(self, name: str) -> UpscaleModel:
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
            model = build_model(load_weights(path), path, self.device)
            self._models[name] = (stamp, model)
            self._models.move_to_end(name)
            while len(self._models) > self.cache_limit:
                self._models.popitem(last=False)
            return model

    def cached_names(self) -> list[str]:
        """Names of the models held in memory, least recently used first."""
        with self._lock:
            return list(self._models)

    def run_model(self, image: Image.Image, name: str, settings) -> Image.Image:
        """One pass of a model over `image`, tiled as the settings say."""
        model = self.load(name)
        x = image_to_tensor(image).to(self.device)
        y = tiled_apply(model.network, x, scale=model.scale, tile=settings.ESRGAN_tile,
                        overlap=settings.ESRGAN_tile_overlap)
        return tensor_to_image(y)

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


def upscalers_of(runtime) -> UpscalerRegistry:
    """The runtime's registry (`Runtime.create` builds one, so loaded models are shared
    by every job), or a fresh one over its ESRGAN folder for a bare test runtime."""
    registry = getattr(runtime, "upscalers", None)
    if registry is not None:
        return registry
    return UpscalerRegistry(folder=runtime.paths.esrgan_dir)
