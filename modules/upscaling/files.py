"""Reading upscaler model files safely, whatever process runs them.

safetensors through the project's reader; pickles (.pth/.pt/.ckpt) through the
allow-list unpickler (`modules/models/safe_unpickle.py`), never an unrestricted
`torch.load`. BasicSR's `params_ema` / `params` wrappers are unwrapped.
"""

from __future__ import annotations

from pathlib import Path

from modules.models.errors import ModelLoadError
from modules.upscaling.keys import unwrap

MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".ckpt")


def load_weights(path: Path) -> dict:
    """Tensors of a model file, unwrapped from `params_ema` / `params` / `state_dict`."""
    from modules.models.safe_unpickle import load_pickle_checkpoint
    from modules.models.single_file import file_format, load_file

    if file_format(path) == "safetensors":
        return load_file(path)
    loaded = load_pickle_checkpoint(path, mmap=False)
    if not isinstance(loaded, dict):
        raise ModelLoadError(str(path), f"not a state dict ({type(loaded).__name__})")
    return unwrap(loaded)
