"""What SD3.x / Flux.1 plans add (modules/pipeline/flow_plan.py), without running a model."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from modules.models.patcher import ModelPatcher
from modules.nn.flux import tiny_flux_config
from modules.pipeline import flow_plan as FP
from modules.pipeline.params import ParamsError, Txt2ImgParams
from tests.flow_tiny import TINY_FLUX_DEV, TINY_SD35
from tests.tiny import TINY_SD15


def test_sizes_must_be_multiples_of_16():
    FP.check_size(Txt2ImgParams(width=64, height=80), TINY_FLUX_DEV)
    with pytest.raises(ParamsError, match="height"):
        FP.check_size(Txt2ImgParams(width=64, height=72), TINY_SD35)


def test_distilled_guidance_only_for_flux_dev():
    params = Txt2ImgParams(distilled_cfg_scale=2.0, enable_hr=True, hr_distilled_cfg=4.0)
    assert FP.flow_infotext(params, TINY_FLUX_DEV) == {"Distilled CFG Scale": 2.0,
                                                       "Hires Distilled CFG Scale": 4.0}
    assert FP.flow_infotext(params, TINY_SD35) == {} == FP.flow_infotext(params, TINY_SD15)
    plan = SimpleNamespace(params=params, loaded=SimpleNamespace(family=TINY_FLUX_DEV))
    assert FP.model_kwargs(plan) == {"guidance": 2.0}
    plan.loaded.family = TINY_SD35
    assert FP.model_kwargs(plan) == {}
    schnell = replace(TINY_FLUX_DEV, diffusion=tiny_flux_config(guidance_embed=False))
    plan.loaded.family = schnell  # schnell has no guidance_in
    assert FP.model_kwargs(plan) == {} and FP.flow_infotext(params, schnell) == {}


def test_module_infotext_lists_the_separate_parts():
    model = SimpleNamespace(infotext=lambda: {"Module 1": "ae", "Module 2": "clip_l"})
    assert FP.module_infotext(model) == {"Module 1": "ae", "Module 2": "clip_l"}
    assert FP.module_infotext(SimpleNamespace()) == {}


def test_a_loaded_model_without_conditioner_gets_one_view_per_model():
    calls = []
    patcher = ModelPatcher(model=SimpleNamespace())
    patcher.text_encoder = lambda name: calls.append(name) or name  # the patched encoders
    loaded = SimpleNamespace(conditioner=None, family=TINY_FLUX_DEV, patcher=patcher)
    first = FP.with_flow_conditioner(loaded, tokenizer="clip")
    second = FP.with_flow_conditioner(loaded, tokenizer="clip")
    assert loaded.conditioner is None and first is not loaded
    assert first.conditioner is second.conditioner  # built once, kept in the patcher's memos
    assert first.conditioner.encoders == ("clip_l", "t5xxl") and calls == ["clip_l", "t5xxl"]
    assert FP.with_flow_conditioner(first, tokenizer="clip") is first
