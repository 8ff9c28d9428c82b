"""A whole SD3 / SD3.5 / Flux.1 model: diffusion transformer, 16-channel VAE, text encoders.

`FlowModel` keeps the layout of an all-in-one file: the transformer at
`model.diffusion_model`, the VAE at `first_stage_model` and the text encoders in
`text_encoders` by name ("clip_l", "clip_g": transformers' CLIP classes through
`modules.nn.text_encoders`; "t5xxl": transformers' `T5EncoderModel` through
`modules.nn.t5_encoder`). `unet` names the transformer too, so code written for
`StableDiffusionModel` (patcher, component placer) finds the denoiser.

`assemble_flow_model` builds every part on the meta device (no memory, no random
init) and fills it part by part from its `Source`, tensors cast to the target dtype as
they are read, so peak memory stays near the size of the weights. A tensor of the wrong
shape, a missing tensor or a damaged file is a `ModelLoadError` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from modules.models.errors import ModelLoadError
from modules.models.flow_families import FlowFamily
from modules.models.flow_loader import DIFFUSION, VAE, FlowPlan, Source
from modules.models.gguf_io import is_gguf
from modules.models.lowbit_load import load_diffusion_weights
from modules.models.single_file import SAFETENSORS_SUFFIXES
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.flux import FluxTransformer
from modules.nn.mmdit import MMDiT
from modules.nn.t5_encoder import T5TextEncoder
from modules.nn.text_encoders import TextEncoder


class DiffusionWrapper(nn.Module):
    """The wrapper level of single files, so the transformer sits at `model.diffusion_model`."""

    def __init__(self, *, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model


class FlowModel(nn.Module):
    """Diffusion transformer + VAE + text encoders of one flow family."""

    def __init__(self, *, family: FlowFamily) -> None:
        super().__init__()
        self.family = family
        diffusion = (MMDiT(config=family.diffusion) if family.architecture == "sd3"
                     else FluxTransformer(config=family.diffusion))
        self.model = DiffusionWrapper(diffusion_model=diffusion)
        self.first_stage_model = AutoencoderKL(config=family.vae)
        self.text_encoders = nn.ModuleDict({
            spec.name: (T5TextEncoder(config=spec.config) if spec.name == "t5xxl"
                        else TextEncoder(config=spec.config))
            for spec in family.text_encoders
        })
        # File names of the separate parts used (infotext "Module N"); set by the loader.
        self.modules_used: tuple[str, ...] = ()

    @property
    def diffusion_model(self) -> nn.Module:
        """The MMDiT or Flux transformer: (x, σ-based timesteps, context, y, ...) -> velocity."""
        return self.model.diffusion_model

    @property
    def unet(self) -> nn.Module:
        """The denoiser under the name shared code uses for it."""
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    def infotext(self) -> dict[str, str]:
        """Forge's fields for the separate parts used: {"Module 1": "ae", ...}."""
        return {f"Module {index}": name for index, name in enumerate(self.modules_used, 1)}


def assemble_flow_model(plan: FlowPlan, *, dtype: torch.dtype, vae_dtype: torch.dtype,
                        device: str | torch.device = "cpu",
                        storage_label: str = "Automatic") -> FlowModel:
    """Build `plan.family`'s model on the meta device, then fill each part from its source.

    :param storage_label: the `forge_unet_storage_dtype` setting: float8 / GGUF diffusion
        weights stay low-bit (`lowbit_load.py`), or dense ones are converted
    """
    with torch.device("meta"):
        model = FlowModel(family=plan.family)
    parts: dict[str, nn.Module] = {DIFFUSION: model.diffusion_model, VAE: model.vae,
                                   **dict(model.text_encoders.items())}
    for kind, module in parts.items():
        source = plan.sources[kind]
        if kind == DIFFUSION and _low_bit(source, storage_label):
            _fill_low_bit(module, source, storage_label, dtype=dtype, device=device)
            continue
        tensors = source.read(dtype=vae_dtype if kind == VAE else dtype, device=device)
        _fill(module, tensors, kind, source.path)
        del tensors
    model.modules_used = tuple(part.name for part in plan.modules)
    return model.eval().requires_grad_(False)


def _low_bit(source: Source, storage_label: str) -> bool:
    """Whether the diffusion weights go through the low-bit loader (single files only)."""
    if source.files or source.convert:  # diffusers names: renamed by the dense path
        return False
    asked = storage_label != "Automatic" and source.path.lower().endswith(SAFETENSORS_SUFFIXES)
    return is_gguf(source.path) or source.float8 or asked


def _fill_low_bit(module: nn.Module, source: Source, storage_label: str, *,
                  dtype: torch.dtype, device: str | torch.device) -> None:
    try:
        result = load_diffusion_weights(module, source.path, storage_label=storage_label,
                                        compute_dtype=dtype, prefix=source.prefix, device=device)
    except (RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[-1].strip()
        raise ModelLoadError(source.path, f"diffusion weights do not fit: {reason}") from error
    _check_filled(module, result.missing, DIFFUSION, source.path)


def _fill(module: nn.Module, tensors: Mapping[str, torch.Tensor], kind: str, path: str) -> None:
    """Assign `tensors` by name; every parameter and buffer must be filled, shapes must fit."""
    try:
        if isinstance(module, TextEncoder):
            missing = list(module.load_checkpoint_weights(dict(tensors), strict=False,
                                                          assign=True).missing)
        elif isinstance(module, T5TextEncoder):
            missing = module.load_weights(tensors)
        else:
            missing = module.load_state_dict(dict(tensors), strict=False, assign=True).missing_keys
    except RuntimeError as error:  # size mismatch
        reason = str(error).strip().splitlines()[-1].strip()
        raise ModelLoadError(path, f"{kind} weights do not fit: {reason}") from error
    _check_filled(module, missing, kind, path)


def _check_filled(module: nn.Module, missing: list[str], kind: str, path: str) -> None:
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()]
            if t.is_meta]
    if missing or left:
        raise ModelLoadError(path, f"{kind}: {len(missing or left)} weights missing, "
                                   f"e.g. {(missing or left)[:3]}")
