"""A page opened while the first checkpoint loads picks up its name and native size when
the load ends, without a reload (docs/security.md, "A1111 behaviours clients rely on")."""

from __future__ import annotations

import gradio as gr
import pytest

from tests.helpers.webui_runtime import make_runtime
from webui import app as app_module


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("startup-ui"), load=False)
    yield rt
    rt.jobs.stop()


def timer_event(blocks: gr.Blocks):
    """The page's model timer and its tick event."""
    timers = [block for block in blocks.blocks.values() if isinstance(block, gr.Timer)]
    assert len(timers) == 1
    timer = timers[0]
    events = [fn for fn in blocks.fns.values() if (timer._id, "tick") in fn.targets]
    assert len(events) == 1
    return timer, events[0]


def test_timer_fills_checkpoint_and_size_of_both_tabs_after_the_load(runtime, monkeypatch):
    assert not runtime.ready.is_set()
    blocks = app_module.build_ui(runtime)
    timer, event = timer_event(blocks)
    assert timer.active
    outputs = [getattr(block, "elem_id", None) for block in event.outputs]
    assert outputs == ["setting_sd_model_checkpoint", "txt2img_width", "txt2img_height",
                       "img2img_width", "img2img_height", None]
    page = [512, 512, 512, 768]  # what the page shows; the user changed img2img's height
    assert event.fn(*page) == [gr.skip()] * 6  # still loading: nothing changes, keep polling

    runtime.models.load_initial()
    runtime.models.startup_warnings = ["broken.safetensors could not be loaded: garbage"]
    runtime.ready.set()
    warned = []
    monkeypatch.setattr(gr, "Warning", warned.append)
    checkpoint, *sides, stop = event.fn(*page)
    assert warned == runtime.models.startup_warnings  # why another model was loaded
    assert checkpoint["value"] == runtime.models.current.title
    assert runtime.models.current.title in checkpoint["choices"]
    assert sides == [64, 64, 64, gr.skip()]  # the tiny model's native size, kept 768
    assert stop.active is False
