"""Always-on scripts in the txt2img / img2img tabs, without a browser: one accordion per
script whose arguments all render (`enabled` first; ControlNet builds its own from its
`ui()`), every generation sends their values as `alwayson_scripts`, and pasting an
infotext sets them from the script's `infotext_fields` keys.

A test extension with one always-on script ("Test probe") is written into the data
dir's extensions/ folder; its `process` writes "Test key" into the infotext.
"""

from __future__ import annotations

from collections import deque
from pathlib import Path

import gradio as gr
import pytest

from modules.infotext import parse_infotext
from tests.helpers.webui_runtime import make_runtime
from webui.panel_wiring import paste_updates
from webui.script_ui import build_scripts
from webui.tabs import img2img as img2img_tab
from webui.tabs import txt2img as txt2img_tab

PROBE_SOURCE = '''
from dataclasses import dataclass

from modules.scripts.args import arg
from modules.scripts.base import AlwaysVisible, Script


class TestProbe(Script):
    @dataclass
    class Args:
        strength: float = arg(0.5, "Test strength", minimum=0.0, maximum=2.0, step=0.05)
        enabled: bool = arg(False, "Enable")

    def title(self):
        return "Test probe"

    def show(self, is_img2img):
        return AlwaysVisible

    def infotext_fields(self):
        return {"enabled": "Test enabled", "strength": "Test key"}

    def process(self, plan, args):
        if args.enabled:
            plan.extra_params["Test enabled"] = True
            plan.extra_params["Test key"] = args.strength
'''
TITLE = "Test probe"
COMMON = {"prompt": "a probe", "negative_prompt": "", "sampler_name": "Euler a",
          "scheduler": "Automatic", "steps": 2, "width": 64, "height": 64, "n_iter": 1,
          "batch_size": 1, "cfg_scale": 7.0, "seed": 5, "seed_extras": False, "subseed": -1,
          "subseed_strength": 0.0, "seed_resize_from_w": 0, "seed_resize_from_h": 0,
          "override_settings": [], "styles": []}


def write_probe_extension(data_dir: Path) -> Path:
    """`<data dir>/extensions/test-probe/scripts/probe.py`, loaded like a user extension."""
    folder = data_dir / "extensions" / "test-probe" / "scripts"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "probe.py").write_text(PROBE_SOURCE, encoding="utf-8")
    return data_dir


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(write_probe_extension(tmp_path_factory.mktemp("alwayson-ui")))
    yield rt
    rt.jobs.stop()


def probe_slice(ui, items: list) -> list:
    """The probe's two entries among `items`, which end with the always-on widgets."""
    start = len(items) - len(ui.alwayson_widgets())
    for controls in ui.alwayson:
        if controls.title == TITLE:
            return items[start:start + 2]
        start += len(controls.widgets)
    raise AssertionError("no probe accordion")


def probe_values(ui, enabled: bool, strength: float) -> list:
    """`inputs()` values: no selectable script, defaults for the other accordions."""
    values = ["None", *[None] * (len(ui.inputs()) - 1 - len(ui.alwayson_widgets()))]
    for controls in ui.alwayson:
        own = [enabled, strength] if controls.title == TITLE else [
            w.value for w in controls.widgets]
        values.extend(own)
    return values


def last(iterator):
    return deque(iterator, maxlen=1)[0]


def test_one_accordion_per_renderable_alwayson_script(runtime):
    titles = [s.title() for s in runtime.extensions.alwayson(False)]
    assert TITLE in titles
    with gr.Blocks():
        ui = build_scripts(runtime, "txt2img", is_img2img=False)
    shown = [c.title for c in ui.alwayson]
    assert TITLE in shown and "ControlNet" in shown  # ControlNet: its own ui()
    probe = ui.alwayson[shown.index(TITLE)]
    assert isinstance(probe.group, gr.Accordion) and probe.group.open is False
    assert probe.group.label == TITLE
    assert probe.names == ["enabled", "strength"]  # the `enabled` checkbox first
    assert [w.elem_id for w in probe.widgets] == ["txt2img_alwayson_test_probe_enabled",
                                                  "txt2img_alwayson_test_probe_strength"]
    assert isinstance(probe.widgets[0], gr.Checkbox) and isinstance(probe.widgets[1], gr.Slider)
    inputs = ui.inputs()
    assert inputs[0] is ui.dropdown and probe_slice(ui, inputs) == probe.widgets


def test_generate_sends_alwayson_values_and_infotext_carries_them(runtime):
    with gr.Blocks():
        ui = build_scripts(runtime, "txt2img", is_img2img=False)
    request = ui.request(probe_values(ui, True, 0.75))
    assert request["script_name"] is None
    assert set(request["alwayson_scripts"]) == {c.title for c in ui.alwayson}
    assert request["alwayson_scripts"][TITLE] == {"args": {"enabled": True, "strength": 0.75}}
    _, infotext, _, results = last(txt2img_tab.generate(runtime, {**COMMON, **request}))
    parsed = parse_infotext(results["infotexts"][0])
    assert parsed["Test key"] == "0.75" and parsed["Test enabled"] == "True"
    off = ui.request(probe_values(ui, False, 0.75))
    _, _, _, results = last(txt2img_tab.generate(runtime, {**COMMON, **off}))
    assert "Test key" not in parse_infotext(results["infotexts"][0])


def test_paste_and_send_set_the_alwayson_widgets(runtime):
    with gr.Blocks():
        with gr.Tab("txt2img"):
            panel = txt2img_tab.build(runtime)
        with gr.Tab("img2img"):
            i2i = img2img_tab.build(runtime)
    widgets = panel.paste_widgets()
    probe = next(c for c in panel.scripts.alwayson if c.title == TITLE)
    assert probe_slice(panel.scripts, widgets) == probe.widgets
    text = "a cat\nSteps: 4, Seed: 3, Size: 64x64, Test enabled: True, Test key: 1.25"
    updates = paste_updates(runtime, panel, text, {})
    assert len(updates) == len(widgets) and probe_slice(panel.scripts, updates) == [True, 1.25]
    assert updates[panel.names.index("steps")] == 4
    kept = paste_updates(runtime, panel, "a cat\nSteps: 4, Seed: 3", {})
    skipped = kept[len(panel.names):]  # every always-on widget: left as it is
    assert skipped and all(isinstance(u, type(gr.skip())) for u in skipped)
    last_run = paste_updates(runtime, panel, "", {"infotexts": [text]})  # empty prompt box
    assert probe_slice(panel.scripts, last_run) == [True, 1.25]
    target = img2img_tab.send_target(runtime, i2i, "img2img")
    scripts = i2i.panel.scripts
    sent_to = probe_slice(scripts, target.extra_outputs)
    assert [w.elem_id for w in sent_to] == ["img2img_alwayson_test_probe_enabled",
                                            "img2img_alwayson_test_probe_strength"]
    sent = target.extra_values(None, text)
    assert len(sent) == len(target.extra_outputs) and probe_slice(scripts, sent) == [True, 1.25]


def test_the_ui_refuses_a_bad_alwayson_value_before_queuing(runtime):
    from modules.pipeline.params import Txt2ImgParams
    from webui.requests import checked_request

    bad = {TITLE: {"args": {"enabled": True, "strength": 7.5}}}  # the maximum is 2.0
    with pytest.raises(gr.Error, match="strength"):
        checked_request(runtime, Txt2ImgParams(width=64, height=64, alwayson_scripts=bad),
                        is_img2img=False)
    good = {TITLE: {"args": {"enabled": True, "strength": 1.5}}}
    checked_request(runtime, Txt2ImgParams(width=64, height=64, alwayson_scripts=good),
                    is_img2img=False)
