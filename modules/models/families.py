"""Model families: SD1.x, SD2.x, SDXL base and refiner, with their inpainting variants.

A family is a small declaration: the configs of its U-Net, VAE and text encoders, the
state-dict prefix of each component in a single-file (LDM) checkpoint, the prediction
type and the native resolution. Detection from a checkpoint header lives in
`modules/models/detection.py`; nothing here reads files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from modules.nn.configs import (
    FlowConfig,
    NoiseScheduleConfig,
    TextEncoderConfig,
    UNetConfig,
    VAEConfig,
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."

Prediction = Literal["eps", "v", "flow"]  # "flow": SD3 / Flux (flow_families.py)
AdmKind = Literal["none", "sdxl", "sdxl_refiner"]


@dataclass(frozen=True, kw_only=True)
class TextEncoderSpec:
    """One text encoder of a family and where its weights sit in an LDM checkpoint."""

    name: str  # "clip_l", "clip_h" or "clip_g"
    prefix: str
    config: TextEncoderConfig


@dataclass(frozen=True, kw_only=True)
class Family:
    """Everything Easel needs to know to build and drive one kind of SD model."""

    name: str
    label: str
    unet: UNetConfig
    vae: VAEConfig
    text_encoders: tuple[TextEncoderSpec, ...]
    prediction: Prediction = "eps"
    native_resolution: int = 512
    adm: AdmKind = "none"
    schedule: NoiseScheduleConfig = field(default_factory=NoiseScheduleConfig)
    zero_terminal_snr: bool = False
    # Rectified-flow models (SD3, Flux.1): their shift; None for eps / v models.
    flow: FlowConfig | None = None

    @property
    def is_flow(self) -> bool:
        return self.flow is not None

    @property
    def is_inpainting(self) -> bool:
        return self.unet.in_channels == 9

    @property
    def is_sdxl(self) -> bool:
        return self.adm != "none"

    @property
    def latent_channels(self) -> int:
        return self.vae.embed_dim

    def with_prediction(self, prediction: Prediction) -> "Family":
        return replace(self, prediction=prediction)

    def as_inpainting(self) -> "Family":
        """The 9-channel variant: latent (4) + mask (1) + masked-image latent (4)."""
        return replace(
            self,
            name=self.name + "_inpaint",
            label=self.label + " inpainting",
            unet=replace(self.unet, in_channels=9),
        )


CLIP_L = TextEncoderConfig()
CLIP_H = TextEncoderConfig(
    source_layout="open_clip",
    hidden_size=1024,
    num_layers=24,
    num_heads=16,
    intermediate_size=4096,
    hidden_act="gelu",
    layer=-2,
    final_norm=True,
    pad_with_eos=False,
)
SDXL_CLIP_L = replace(CLIP_L, layer=-2, final_norm=False)
CLIP_G = TextEncoderConfig(
    source_layout="open_clip",
    hidden_size=1280,
    num_layers=32,
    num_heads=20,
    intermediate_size=5120,
    hidden_act="gelu",
    projection_dim=1280,
    layer=-2,
    final_norm=False,
    pad_with_eos=False,
    output_pooled=True,
)

SD15 = Family(
    name="sd1",
    label="SD 1.x",
    unet=UNetConfig(),
    vae=VAEConfig(),
    text_encoders=(
        TextEncoderSpec(name="clip_l", prefix="cond_stage_model.transformer.", config=CLIP_L),
    ),
)

SD2 = Family(
    name="sd2",
    label="SD 2.x",
    unet=UNetConfig(
        num_heads=None,
        num_head_channels=64,
        context_dim=1024,
        use_linear_in_transformer=True,
    ),
    vae=VAEConfig(),
    text_encoders=(
        TextEncoderSpec(name="clip_h", prefix="cond_stage_model.model.", config=CLIP_H),
    ),
)
SD2_V = replace(SD2, name="sd2_v", label="SD 2.x v-prediction", prediction="v",
                native_resolution=768)

SDXL = Family(
    name="sdxl",
    label="SDXL",
    unet=UNetConfig(
        channel_mult=(1, 2, 4),
        transformer_depth=(0, 2, 10),
        transformer_depth_middle=10,
        context_dim=2048,
        num_heads=None,
        num_head_channels=64,
        use_linear_in_transformer=True,
        adm_in_channels=2816,
    ),
    vae=VAEConfig(scale_factor=0.13025),
    text_encoders=(
        TextEncoderSpec(
            name="clip_l", prefix="conditioner.embedders.0.transformer.", config=SDXL_CLIP_L
        ),
        TextEncoderSpec(name="clip_g", prefix="conditioner.embedders.1.model.", config=CLIP_G),
    ),
    native_resolution=1024,
    adm="sdxl",
)

SDXL_REFINER = Family(
    name="sdxl_refiner",
    label="SDXL refiner",
    unet=UNetConfig(
        model_channels=384,
        channel_mult=(1, 2, 4, 4),
        transformer_depth=(0, 4, 4, 0),
        transformer_depth_middle=4,
        context_dim=1280,
        num_heads=None,
        num_head_channels=64,
        use_linear_in_transformer=True,
        adm_in_channels=2560,
    ),
    vae=VAEConfig(scale_factor=0.13025),
    text_encoders=(
        TextEncoderSpec(name="clip_g", prefix="conditioner.embedders.0.model.", config=CLIP_G),
    ),
    native_resolution=1024,
    adm="sdxl_refiner",
)

ALL_FAMILIES: tuple[Family, ...] = (SD15, SD2, SD2_V, SDXL, SDXL_REFINER)
