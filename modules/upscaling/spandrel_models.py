"""Upscaler files of any architecture spandrel knows (ESRGAN, Real-ESRGAN, SwinIR, DAT, HAT,
OmniSR, SPAN, ...), loaded from a state dict we have already read safely.

spandrel (https://github.com/chaiNNer-org/spandrel) detects the architecture and its
hyper-parameters from the state-dict keys and shapes and builds the network. We never
let it open files: our readers give it the tensors (safetensors, or pickles through
the allow-list unpickler), so its own `torch.load` is never used.

spandrel imports torchvision, which only works when it was built for the installed
torch; on a machine whose torch has no matching torchvision (our CPU build of torch
2.13), `import spandrel` fails with a RuntimeError, not an ImportError. `problem()`
reports that as a reason instead of letting it escape. `modules/upscaling/registry.py` then
uses the separate upscaler environment's worker (`remote.py`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from modules.upscaling.network import UpscaleModel

# spandrel purposes an image upscaler can use: super-resolution and 1x restoration.
# Face restoration needs face detection first, inpainting needs a mask.
USABLE_PURPOSES = ("SR", "Restoration")


class SpandrelError(ValueError):
    """A file spandrel cannot turn into an RGB image upscaler; the message names it."""


def problem() -> str | None:
    """None when spandrel imports in this process, else why it does not."""
    try:
        import spandrel  # noqa: F401
    except Exception as error:  # a torchvision built for another torch raises RuntimeError
        return f"spandrel cannot be imported here ({type(error).__name__}: {error})"
    return None


def load_spandrel(state: dict, path: Path, device: torch.device) -> UpscaleModel:
    """The network described by `state` (read from `path`), on `device`, ready to run."""
    import spandrel

    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(
            spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError as error:
        raise SpandrelError(f"{path.name}: not a model architecture spandrel knows "
                            f"({error})") from error
    except (KeyError, RuntimeError, ValueError) as error:
        raise SpandrelError(f"{path.name}: spandrel could not build the model "
                            f"({type(error).__name__}: {error})") from error
    arch = descriptor.architecture.name
    if descriptor.purpose not in USABLE_PURPOSES:
        raise SpandrelError(f"{path.name}: a {arch} {descriptor.purpose} model, not an "
                            "image upscaler")
    if (descriptor.input_channels, descriptor.output_channels) != (3, 3):
        raise SpandrelError(f"{path.name}: {arch} model maps {descriptor.input_channels} to "
                            f"{descriptor.output_channels} channels; only RGB models upscale")
    descriptor.eval()
    return UpscaleModel(network=descriptor, scale=int(descriptor.scale), arch=arch,
                        device=torch.device(device),
                        tileable=descriptor.tiling != spandrel.ModelTiling.INTERNAL)
