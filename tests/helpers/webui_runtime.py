"""A Runtime over a temporary data folder holding one tiny random SD1 checkpoint."""

from __future__ import annotations

from pathlib import Path

from modules.app.cmd_args import parse_args
from modules.runtime import Runtime
from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.tiny import TINY_SD15


def write_data_dir(data: Path) -> Path:
    checkpoint = data / "models" / "Stable-diffusion" / "tiny.safetensors"
    if not checkpoint.exists():
        write_tiny_checkpoint(checkpoint, TINY_SD15)
    return data


def make_runtime(data: Path, *flags: str, load: bool = True) -> Runtime:
    """A Runtime like `launch.py` builds; with `load`, the checkpoint is loaded and ready."""
    runtime = Runtime.create(parse_args(["--data-dir", str(write_data_dir(data)), *flags]))
    if load:
        runtime.models.load_initial()
        runtime.ready.set()
    return runtime
