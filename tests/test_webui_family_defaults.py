"""Per-family UI presets: sampler, schedule, steps and CFG follow the loaded flow family
(Forge's presets) unless the user changed them; page load and checkpoint change apply them."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr

from modules.models.flow_families import FLUX_SCHNELL_FAMILY, SD35_MEDIUM_FAMILY
from tests.flow_tiny import TINY_FLUX_DEV
from tests.test_webui_distilled_cfg import fake_runtime
from tests.tiny import TINY_SD15
from webui import family_defaults as FD

PAGE = {"sampler_name": "DPM++ 2M", "scheduler": "Automatic", "steps": 20, "cfg_scale": 7.0,
        "distilled_cfg_scale": 3.5}


def _set(updates: dict) -> dict:
    """Only the widgets that change."""
    return {name: value for name, value in updates.items() if not isinstance(value, dict)}


def test_family_presets_are_forges():
    assert FD.family_preset(TINY_FLUX_DEV) == {
        "sampler_name": "Euler", "scheduler": "Simple", "steps": 20, "cfg_scale": 1.0,
        "distilled_cfg_scale": 3.5}
    schnell = FD.family_preset(FLUX_SCHNELL_FAMILY)
    assert (schnell["steps"], schnell["cfg_scale"]) == (4, 1.0)
    assert "distilled_cfg_scale" not in schnell
    assert FD.family_preset(SD35_MEDIUM_FAMILY)["cfg_scale"] == 4.5
    assert FD.family_preset(TINY_SD15) == {}


def test_untouched_widgets_take_the_family_preset():
    updates = FD.preset_updates(fake_runtime(TINY_FLUX_DEV), PAGE, PAGE)
    assert _set(updates) == {"sampler_name": "Euler", "scheduler": "Simple", "cfg_scale": 1.0}
    assert updates["steps"] == gr.skip()  # already 20


def test_values_the_user_chose_are_kept():
    chosen = {**PAGE, "steps": 33, "cfg_scale": 2.5, "sampler_name": "DPM++ SDE"}
    updates = FD.preset_updates(fake_runtime(TINY_FLUX_DEV), chosen, PAGE)
    assert _set(updates) == {"scheduler": "Simple"}


def test_switching_families_moves_between_presets():
    dev = {**PAGE, **FD.family_preset(TINY_FLUX_DEV)}
    assert _set(FD.preset_updates(fake_runtime(FLUX_SCHNELL_FAMILY), dev, PAGE)) == {"steps": 4}
    # Back to an SD1 model: the page's own defaults where the preset was not changed.
    schnell = {**dev, "steps": 4, "cfg_scale": 9.0}
    assert _set(FD.preset_updates(fake_runtime(TINY_SD15), schnell, PAGE)) == {
        "sampler_name": "DPM++ 2M", "scheduler": "Automatic", "steps": 20}


def test_nothing_changes_before_the_first_load():
    updates = FD.preset_updates(fake_runtime(TINY_FLUX_DEV, ready=False), PAGE, PAGE)
    assert _set(updates) == {}


def test_wired_on_page_load_and_checkpoint_change():
    runtime = fake_runtime(TINY_FLUX_DEV)
    fields = {}
    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=["a"], value="a")
        fields["steps"] = gr.Slider(1, 150, value=20)
        fields["cfg_scale"] = gr.Slider(1, 30, value=7.0)
        FD.wire_family_defaults(runtime, blocks, checkpoint, [SimpleNamespace(fields=fields)])
    outputs = [fields["steps"]._id, fields["cfg_scale"]._id]
    wired = [(index, tuple(d["targets"][0])) for index, d in
             enumerate(blocks.config["dependencies"]) if d["outputs"] == outputs]
    assert {target for _, target in wired} == {(blocks._id, "load"), (checkpoint._id, "change")}
    for index, _ in wired:
        assert blocks.fns[index].fn(20, 7.0) == [gr.skip(), 1.0]  # Flux.1 dev: CFG 1
        assert blocks.fns[index].fn(20, 5.0) == [gr.skip(), gr.skip()]  # chosen: kept


def test_size_sliders_step_on_the_loaded_familys_grid():
    """Width and height step 16 px for SD3 / Flux.1 (2x2 patches), 8 px for the U-Nets; the
    page's form check (webui/form_checks.js) reads the slider's step."""
    assert FD.size_step(fake_runtime(TINY_FLUX_DEV)) == 16
    assert FD.size_step(fake_runtime(TINY_SD15)) == 8
    assert FD.size_step(fake_runtime(TINY_FLUX_DEV, ready=False)) == 8
    runtime = fake_runtime(TINY_FLUX_DEV)
    fields = {}
    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=["a"], value="a")
        fields["width"] = gr.Slider(64, 2048, value=512, step=8)
        fields["height"] = gr.Slider(64, 2048, value=512, step=8)
        FD.wire_family_defaults(runtime, blocks, checkpoint, [SimpleNamespace(fields=fields)])
    outputs = [fields["width"]._id, fields["height"]._id]
    wired = [index for index, d in enumerate(blocks.config["dependencies"])
             if d["outputs"] == outputs]
    assert len(wired) == 2  # page load and checkpoint change
    for index in wired:
        assert [update["step"] for update in blocks.fns[index].fn()] == [16, 16]


def test_a_single_demo_note_gets_a_single_update(monkeypatch):
    """Gradio refuses a list for one output (ComponentProcessingError in the server log)."""
    runtime = fake_runtime(TINY_SD15)
    monkeypatch.setattr(FD, "demo_loaded", lambda rt: False)
    with gr.Blocks() as blocks:
        checkpoint = gr.Dropdown(choices=["a"], value="a")
        note = FD.build_demo_note(runtime, "txt2img")
        FD.wire_family_defaults(runtime, blocks, checkpoint, [])
    wired = [index for index, d in enumerate(blocks.config["dependencies"])
             if d["outputs"] == [note._id]]
    assert len(wired) == 2
    for index in wired:
        assert blocks.fns[index].fn() == gr.update(visible=False)  # not the demo model
