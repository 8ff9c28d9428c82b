"""A whole Stable Diffusion model: U-Net, VAE and text encoders under their LDM names.

`StableDiffusionModel` mirrors the layout of a single-file checkpoint, so the U-Net
loads from `model.diffusion_model.*` and the VAE from `first_stage_model.*` by name.
Text encoders are transformers' CLIP classes; their weights go through the converter in
`modules.nn.text_encoders`, which knows both the CLIP-L and the OpenCLIP layouts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from modules.models.families import UNET_PREFIX, VAE_PREFIX, Family
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.text_encoder_export import to_checkpoint_layout
from modules.nn.text_encoders import TextEncoder
from modules.nn.unet import UNetModel


class DiffusionWrapper(nn.Module):
    """LDM's wrapper level, kept so the U-Net sits at `model.diffusion_model`."""

    def __init__(self, *, unet: UNetModel) -> None:
        super().__init__()
        self.diffusion_model = unet


@dataclass
class LoadReport:
    """Keys of a checkpoint that were not used, and parameters left without weights."""

    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class StableDiffusionModel(nn.Module):
    """U-Net + VAE + text encoders of one family, built empty and filled by `load`."""

    def __init__(self, *, family: Family) -> None:
        super().__init__()
        self.family = family
        self.model = DiffusionWrapper(unet=UNetModel(config=family.unet))
        self.first_stage_model = AutoencoderKL(config=family.vae)
        self.text_encoders = nn.ModuleDict(
            {spec.name: TextEncoder(config=spec.config) for spec in family.text_encoders}
        )

    @property
    def unet(self) -> UNetModel:
        return self.model.diffusion_model

    @property
    def vae(self) -> AutoencoderKL:
        return self.first_stage_model

    def load_ldm_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> LoadReport:
        """Fill every part from an LDM-layout state dict; `assign` keeps the loaded dtype."""
        report = LoadReport()
        used: set[str] = set()
        used |= _load_part(self.unet, state_dict, UNET_PREFIX, report)
        used |= _load_part(self.vae, state_dict, VAE_PREFIX, report)
        for spec in self.family.text_encoders:
            part = {k[len(spec.prefix):]: v for k, v in state_dict.items()
                    if k.startswith(spec.prefix)}
            used |= {spec.prefix + k for k in part}
            result = self.text_encoders[spec.name].load_checkpoint_weights(
                part, strict=False, assign=True)
            report.missing += [spec.prefix + k for k in result.missing]
            report.unexpected += [spec.prefix + k for k in result.unknown]
        report.unexpected += sorted(k for k in state_dict if k not in used and not _ignorable(k))
        return report


def _load_part(module: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str,
               report: LoadReport) -> set[str]:
    part = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    result = module.load_state_dict(part, strict=False, assign=True)
    report.missing += [prefix + k for k in result.missing_keys]
    report.unexpected += [prefix + k for k in result.unexpected_keys]
    return {prefix + k for k in part}


# Keys real checkpoints carry that no inference module needs (schedule buffers, EMA).
IGNORED_PREFIXES = ("model_ema.", "betas", "alphas_cumprod", "sqrt_", "log_one_minus",
                    "posterior_", "logvar", "lvlb_weights", "model.diffusion_model.__",
                    "loss.", "v_pred", "ztsnr")


def _ignorable(key: str) -> bool:
    return key.startswith(IGNORED_PREFIXES) or key in ("alphas_cumprod_prev",)



def checkpoint_state_dict(model: StableDiffusionModel) -> dict[str, torch.Tensor]:
    """Every tensor under its single-file (LDM) checkpoint name: the inverse of loading."""
    tensors = {UNET_PREFIX + k: v for k, v in model.unet.state_dict().items()}
    tensors |= {VAE_PREFIX + k: v for k, v in model.vae.state_dict().items()}
    for spec in model.family.text_encoders:
        encoder = model.text_encoders[spec.name].transformer
        exported = to_checkpoint_layout(encoder.state_dict(), spec.config)
        tensors |= {spec.prefix + k: v for k, v in exported.items()}
    return tensors
