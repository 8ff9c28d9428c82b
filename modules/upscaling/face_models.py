"""Face restoration networks (GFPGAN 1.3/1.4, CodeFormer, RestoreFormer / ++) built by
spandrel from a state dict we have already read safely (`files.load_weights`).

GFPGAN and RestoreFormer are spandrel architectures; CodeFormer is in
`spandrel_extra_arches` (MIT package, but CodeFormer's own code is under the
non-commercial S-Lab licence 1.0), registered into spandrel when it is installed.

All three take a 512x512 RGB crop. GFPGAN and CodeFormer work in [-1, 1] and return a
tuple whose first item is the picture; CodeFormer takes its fidelity weight `w` as a
keyword (0: most restoration, 1: closest to the input); RestoreFormer's spandrel
`call_fn` does its own normalisation, so it gets [0, 1]. GFPGAN's StyleGAN decoder
draws noise: every crop is restored under a fixed seed (in a forked RNG, so the
caller's random state is untouched) and the result is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

FACE_ARCHES = ("GFPGAN", "CodeFormer", "RestoreFormer")
RESTORE_SEED = 0


class FaceModelError(ValueError):
    """A file that is not a face restoration model spandrel can build; names the file."""


def _install_extra_arches() -> None:
    """Register CodeFormer with spandrel when spandrel_extra_arches is installed."""
    try:
        import spandrel_extra_arches
    except ImportError:
        return
    if not getattr(_install_extra_arches, "done", False):
        spandrel_extra_arches.install()
        _install_extra_arches.done = True


@dataclass
class FaceModel:
    """A loaded face restorer: 512x512 RGB uint8 crop in, restored crop out."""

    descriptor: object  # spandrel's ImageModelDescriptor
    arch: str
    device: torch.device

    def network(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """The network on (B, 3, 512, 512) in [0, 1]; the result in [0, 1]."""
        if self.arch == "RestoreFormer":
            return self.descriptor(x)
        model = self.descriptor.model
        out = model(x * 2 - 1, weight=weight) if self.arch == "CodeFormer" else model(x * 2 - 1)
        return (out[0] + 1) / 2

    @torch.inference_mode()
    def restore(self, crop: np.ndarray, weight: float) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None]
        x = x.to(self.device, torch.float32) / 255
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(RESTORE_SEED)
            y = self.network(x, weight)
        y = y[0].float().clamp(0, 1).mul(255).round().to(torch.uint8)
        return y.permute(1, 2, 0).cpu().numpy()


def load_face_model(state: dict, path: Path, device: torch.device) -> FaceModel:
    """The face restorer described by `state` (read from `path`)."""
    import spandrel

    _install_extra_arches()
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(
            spandrel.canonicalize_state_dict(state))
    except spandrel.UnsupportedModelError as error:
        raise FaceModelError(f"{path.name}: not a model architecture spandrel knows ("
                             f"{error}); CodeFormer needs spandrel_extra_arches") from error
    except (KeyError, RuntimeError, ValueError) as error:
        raise FaceModelError(f"{path.name}: spandrel could not build the model "
                             f"({type(error).__name__}: {error})") from error
    arch = descriptor.architecture.name
    if arch not in FACE_ARCHES:
        raise FaceModelError(f"{path.name}: a {arch} model, not a face restorer "
                             f"({', '.join(FACE_ARCHES)})")
    descriptor.eval()
    return FaceModel(descriptor=descriptor, arch=arch, device=torch.device(device))
