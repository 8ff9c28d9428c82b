"""The "Distilled CFG Scale" slider (Flux.1 dev's guidance): shown for that model only,
sent as `distilled_cfg_scale`, filled by a pasted infotext."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import gradio as gr

from modules.settings import Settings
from tests.flow_tiny import TINY_FLUX_DEV, TINY_SD35
from tests.tiny import TINY_SD15
from webui import fields as F
from webui import panel as PN


def fake_runtime(family, *, ready: bool = True):
    event = threading.Event()
    if ready:
        event.set()
    models = SimpleNamespace(current=SimpleNamespace(family=family), checkpoints=lambda: [])
    return SimpleNamespace(ready=event, models=models, upscalers=SimpleNamespace(names=list))


def test_slider_shows_for_flux_dev_only():
    assert PN.shows_distilled_cfg(fake_runtime(TINY_FLUX_DEV))
    assert not PN.shows_distilled_cfg(fake_runtime(TINY_SD35))
    assert not PN.shows_distilled_cfg(fake_runtime(TINY_SD15))
    assert not PN.shows_distilled_cfg(fake_runtime(TINY_FLUX_DEV, ready=False))
    assert not PN.shows_distilled_cfg(None)
    with gr.Blocks():
        shown, hidden = {}, {}
        PN.build_cfg("txt2img", shown, fake_runtime(TINY_FLUX_DEV))
        PN.build_cfg("img2img", hidden, fake_runtime(TINY_SD15))
    assert shown["distilled_cfg_scale"].visible and not hidden["distilled_cfg_scale"].visible
    assert shown["distilled_cfg_scale"].elem_id == "txt2img_distilled_cfg_scale"
    assert shown["distilled_cfg_scale"].label == "Distilled CFG Scale"
    assert shown["distilled_cfg_scale"].value == 3.5


def test_slider_value_becomes_the_request_field():
    assert "distilled_cfg_scale" in F.FIELDS and "distilled_cfg_scale" in F.COMMON_FIELDS
    assert F.params_from_fields({"distilled_cfg_scale": 2.0}).distilled_cfg_scale == 2.0
    assert F.params_from_fields({}).distilled_cfg_scale == 3.5
    assert F.label_for("distilled_cfg_scale") == "Distilled CFG Scale"
    assert "hr_distilled_cfg" in F.FIELDS and "hr_distilled_cfg" not in F.COMMON_FIELDS
    hires = F.params_from_fields({"enable_hr": True, "hr_distilled_cfg": 5.0})
    assert hires.hr_distilled_cfg == 5.0 and F.params_from_fields({}).hr_distilled_cfg == 3.5


def test_hires_slider_shows_for_flux_dev_only():
    runtime = fake_runtime(TINY_FLUX_DEV)
    with gr.Blocks():
        shown, hidden = {}, {}
        PN.build_hires(runtime, "txt2img", shown)
        runtime.models.current = SimpleNamespace(family=TINY_SD15)
        PN.build_hires(runtime, "txt2img", hidden)
    assert shown["hr_distilled_cfg"].visible and not hidden["hr_distilled_cfg"].visible
    assert shown["hr_distilled_cfg"].label == "Hires Distilled CFG Scale"


def test_pasted_infotext_fills_the_slider():
    text = "a cat\nSteps: 20, Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 2.5, Seed: 1"
    values = F.fields_from_infotext(text + ", Hires Distilled CFG Scale: 4.0", Settings())
    assert values["distilled_cfg_scale"] == 2.5 and values["cfg_scale"] == 1.0
    assert values["hr_distilled_cfg"] == 4.0
