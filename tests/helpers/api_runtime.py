"""A Runtime over two tiny random SD1 checkpoints, and a TestClient for the API."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from modules.app.cmd_args import parse_args
from modules.runtime import Runtime
from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.tiny import TINY_SD15

SMALL = {"width": 64, "height": 64, "steps": 2}


def make_runtime(data: Path, *flags: str) -> Runtime:
    """Checkpoints `alpha` (default) and `beta` (different weights) under `data`."""
    folder = data / "models" / "Stable-diffusion"
    if not (folder / "alpha.safetensors").exists():
        write_tiny_checkpoint(folder / "alpha.safetensors", TINY_SD15, seed=0)
        write_tiny_checkpoint(folder / "beta.safetensors", TINY_SD15, seed=1)
    runtime = Runtime.create(parse_args(["--data-dir", str(data), "--nowebui", *flags]))
    runtime.ready.set()
    return runtime


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def png_base64(image: Image.Image, prefix: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return "data:image/png;base64," + text if prefix else text
