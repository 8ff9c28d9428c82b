"""Request and response bodies of `/sdapi/v1/*`, written by hand to A1111's contract.

Field names, types and defaults follow A1111 v1.10.1, never our internals (docs/a1111-semantics.md,
"Generation request fields" and "Extras, PNG info and progress"): an empty txt2img body means Euler,
50 steps, CFG 7.0, 512x512, seed -1. As upstream, every field may be sent as `null`; a null field
takes its default. Floats must be finite, and free-form values (`override_settings`, `script_args`,
...) may not hide NaN or Infinity either, since JSON answers cannot carry them.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


def check_finite(value: Any, path: str = "value") -> Any:
    """Reject NaN/Infinity anywhere inside a JSON value."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{path} must be a finite number")
    if isinstance(value, dict):
        for key, item in value.items():
            check_finite(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite(item, f"{path}[{index}]")
    return value


class ApiModel(BaseModel):
    """Base: finite floats only; unknown fields ignored (as A1111's pydantic v1 models)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _nulls_take_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = cls.model_fields
        return {key: value for key, value in data.items()
                if not (value is None and key in fields and not _defaults_to_none(fields[key]))}


def _defaults_to_none(field: Any) -> bool:
    return field.default is None and field.default_factory is None


class GenerationRequest(ApiModel):
    """Fields shared by txt2img and img2img (A1111's `StableDiffusionProcessing`)."""

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    distilled_cfg_scale: float = 3.5
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    force_task_id: str | None = None
    sampler_index: str = "Euler"
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None

    @field_validator("override_settings", "comments", "script_args", "alwayson_scripts")
    @classmethod
    def _finite(cls, value: Any) -> Any:
        return check_finite(value)


class Txt2ImgRequest(GenerationRequest):
    """`POST /sdapi/v1/txt2img` (A1111's `StableDiffusionProcessingTxt2Img`)."""

    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    hr_distilled_cfg: float = 3.5


class Img2ImgRequest(GenerationRequest):
    """`POST /sdapi/v1/img2img` (A1111's `StableDiffusionProcessingImg2Img`)."""

    init_images: list[str] | None = None
    resize_mode: int = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class GenerationResponse(ApiModel):
    images: list[str] = Field(default_factory=list)
    parameters: dict[str, Any]
    info: str


class ExtrasBaseRequest(ApiModel):
    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0, ge=0, le=1)
    codeformer_visibility: float = Field(0, ge=0, le=1)
    codeformer_weight: float = Field(0, ge=0, le=1)
    upscaling_resize: float = Field(2, gt=0)
    upscaling_resize_w: int = Field(512, ge=1)
    upscaling_resize_h: int = Field(512, ge=1)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0, ge=0, le=1)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = ""


class FileData(ApiModel):
    data: str
    name: str


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(default_factory=list)


class PNGInfoRequest(ApiModel):
    image: str = ""


class PNGInfoResponse(ApiModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(ApiModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(ApiModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class JobControlRequest(ApiModel):
    """The optional body of `/interrupt` and `/skip`: which job (Easel's addition)."""

    id_task: str | None = Field(None, max_length=256)


class InternalProgressRequest(ApiModel):
    id_task: str | None = None
    id_live_preview: int = -1
    live_preview: bool = True


class InternalProgressResponse(ApiModel):
    active: bool
    queued: bool
    completed: bool
    progress: float | None = None
    eta: float | None = None
    live_preview: str | None = None
    id_live_preview: int | None = None
    textinfo: str | None = None


class CreateEmbeddingRequest(ApiModel):
    name: str
    num_vectors_per_token: int = 1
    overwrite_old: bool = False
    init_text: str = "*"


class TrainEmbeddingRequest(ApiModel):
    """A1111's `train_embedding` arguments with its UI defaults; `training_width` /
    `training_height` left unset mean the model's native size (A1111: 512)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="allow")

    id_task: str | None = None
    embedding_name: str = ""
    learn_rate: str = "0.005"
    batch_size: int = 1
    gradient_step: int = 1
    data_root: str = ""
    log_directory: str = "textual_inversion"
    training_width: int | None = None
    training_height: int | None = None
    varsize: bool = False
    steps: int = 100000
    clip_grad_mode: Literal["disabled", "value", "norm"] = "disabled"
    clip_grad_value: float | str = 0.1
    shuffle_tags: bool = False
    tag_drop_out: float = 0.0
    latent_sampling_method: Literal["once", "deterministic", "random"] = "once"
    use_weight: bool = False
    create_image_every: int = 500
    save_embedding_every: int = 500
    template_filename: str = "subject_filewords.txt"
    save_image_with_stored_embedding: bool = True
    preview_from_txt2img: bool = False
    seed: int = 0


class TrainResponse(ApiModel):
    info: str


class InterrogateRequest(ApiModel):
    image: str = ""
    model: str = "clip"
