"""What a job does differently for the rectified-flow families (SD3.x, Flux.1).

The sampling itself (flow sigmas with the family's shift, x = noise at sigma 1, the
img2img start (1 - sigma) init + sigma noise, `FlowDenoiser`) lives in `sample.py`;
this module holds the rest, fixed when the job is planned:

* width and height must be whole multiples of the family's `size_multiple` (16: 2x2
  patches of 8x-down latents), else a `ParamsError` naming the field (an API 422);
* the prompts are encoded by a `FlowConditioner` (CLIP + T5), built once per loaded
  model (kept in its patcher's memos) when the loader did not attach one;
* Flux.1 dev's distilled guidance: the request's `distilled_cfg_scale` (hires pass:
  `hr_distilled_cfg`) goes to the transformer as `guidance=`, and the infotext says
  `Distilled CFG Scale` (and `Hires Distilled CFG Scale`), as Forge writes them;
* the separate files the model was assembled from: `Module 1: ae, Module 2: clip_l, ...`.
"""

from __future__ import annotations

import copy

from modules.conditioning.flow_conditioner import FlowConditioner
from modules.pipeline.params import ParamsError

CONDITIONER_MEMO = "flow_conditioner"


def is_flow(family) -> bool:
    return bool(getattr(family, "is_flow", False))


def has_distilled_guidance(family) -> bool:
    """Whether the family's transformer reads a guidance value (Flux.1 dev)."""
    return is_flow(family) and bool(getattr(getattr(family, "diffusion", None),
                                            "guidance_embed", False))


def check_size(params, family) -> None:
    """Width and height of a flow model's request: whole multiples of its patch grid."""
    multiple = getattr(family, "size_multiple", 16)
    for name in ("width", "height"):
        value = getattr(params, name)
        if value % multiple:
            raise ParamsError(name, f"{value} is not a multiple of {multiple} "
                                    f"({family.label} needs whole 2x2 latent patches)")


def with_flow_conditioner(loaded, tokenizer):
    """`loaded`, or a view of it carrying a `FlowConditioner` when it has no conditioner."""
    if loaded.conditioner is not None:
        return loaded

    def build() -> FlowConditioner:
        patcher = loaded.patcher
        encoders = [patcher.text_encoder(spec.name) for spec in loaded.family.text_encoders]
        return FlowConditioner(encoders=encoders, tokenizer=tokenizer, family=loaded.family)

    view = copy.copy(loaded)
    view.conditioner = loaded.patcher.memo(CONDITIONER_MEMO, build)
    return view


def prepare_flow_plan(runtime, plan) -> None:
    """Size check, conditioner and infotext of a flow model's plan (no-op for others)."""
    family = plan.loaded.family
    if not is_flow(family):
        return
    check_size(plan.params, family)
    plan.loaded = with_flow_conditioner(plan.loaded, runtime.models.tokenizer())
    plan.extra_params.update(flow_infotext(plan.params, family))
    plan.extra_params.update(module_infotext(plan.loaded.model))


def module_infotext(model) -> dict:
    """Forge's `Module 1: ae, Module 2: clip_l, ...` for the separate parts a model uses."""
    infotext = getattr(model, "infotext", None)
    return dict(infotext()) if callable(infotext) else {}


def flow_infotext(params, family) -> dict:
    """`Distilled CFG Scale` (and the hires pass's) for a guidance-distilled model."""
    if not has_distilled_guidance(family):
        return {}
    extra = {"Distilled CFG Scale": params.distilled_cfg_scale}
    if getattr(params, "enable_hr", False):
        extra["Hires Distilled CFG Scale"] = params.hr_distilled_cfg
    return extra


def model_kwargs(plan) -> dict:
    """Extra keyword arguments of every transformer call: Flux.1 dev's `guidance`."""
    if not has_distilled_guidance(plan.loaded.family):
        return {}
    return {"guidance": float(plan.params.distilled_cfg_scale)}
