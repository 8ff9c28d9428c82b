"""The "Tiling" checkbox of the txt2img and img2img tabs, without a browser.

The checkbox is the widget of the request field `tiling` (widgets are addressed by the
API field they feed, `webui.fields`): the tabs' generate handlers send it, the job's
infotext says `Tiling: True`, and pasting that infotext (the ↙️ button, "Send to")
ticks the checkbox again, while pasting an infotext without it clears it (A1111 writes
the key only when tiling was on).
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from tests.helpers.webui_runtime import make_runtime
from webui import fields as F
from webui import img2img_fields as I
from webui.panel_wiring import paste_updates
from webui.tabs import img2img as img2img_tab
from webui.tabs import txt2img as txt2img_tab

COMMON = {"prompt": "a red circle", "negative_prompt": "", "sampler_name": "Euler",
          "scheduler": "Automatic", "steps": 2, "width": 64, "height": 64, "n_iter": 1,
          "batch_size": 1, "cfg_scale": 7.0, "seed": 5, "seed_extras": False,
          "override_settings": [], "styles": []}
IMG2IMG = {**COMMON, "resize_mode": "Just resize", "resize_by": I.RESIZE_TO, "scale_by": 1.0,
           "denoising_strength": 0.6, "mask_blur": 4, "inpainting_mask_invert": "Inpaint masked",
           "inpainting_fill": "original", "inpaint_full_res": "Whole picture",
           "inpaint_full_res_padding": 32}
TILED_INFOTEXT = "a red circle\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, " \
                 "Tiling: True"
PLAIN_INFOTEXT = TILED_INFOTEXT.replace(", Tiling: True", "")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("data"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def panels(runtime):
    with gr.Blocks():
        with gr.Tabs():
            with gr.Tab("txt2img"):
                txt2img = txt2img_tab.build(runtime)
            with gr.Tab("img2img"):
                img2img = img2img_tab.build(runtime)
    return txt2img, img2img.panel


def last(iterator):
    """What the page shows when the handler is done."""
    *_, final = iterator
    return final


def test_both_tabs_have_the_checkbox_as_the_tiling_field(panels):
    for panel in panels:
        box = panel.fields["tiling"]
        assert isinstance(box, gr.Checkbox) and box.label == "Tiling" and box.value is False
        assert box.elem_id == f"{panel.prefix}_tiling"
        assert "tiling" in panel.names and box in panel.field_widgets()
        assert box in panel.paste_widgets()
    assert F.label_for("tiling") == "Tiling"


def test_the_checkbox_sends_tiling(runtime):
    assert F.params_from_fields({**COMMON, "tiling": True}).tiling is True
    assert F.params_from_fields({**COMMON, "tiling": False}).tiling is False
    assert F.params_from_fields(COMMON).tiling is False  # an older page without it
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    assert I.img2img_params_from_fields({**IMG2IMG, "tiling": True}, [picture], None).tiling
    # Through the tabs' generate handlers, as the Generate button runs them.
    _, info, _, results = last(txt2img_tab.generate(runtime, {**COMMON, "tiling": True}))
    assert "Tiling: True" in info and "Tiling: True" in results["infotexts"][0]
    _, info, _, _ = last(txt2img_tab.generate(runtime, {**COMMON, "tiling": False}))
    assert "Tiling" not in info
    array = np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8)
    _, info, _, _ = last(img2img_tab.generate(runtime, {**IMG2IMG, "tiling": True}, "img2img",
                                              {"image": Image.fromarray(array)}))
    assert "Tiling: True" in info


def test_paste_sets_the_checkbox(runtime, panels):
    for panel in panels:
        at = panel.names.index("tiling")
        assert paste_updates(runtime, panel, TILED_INFOTEXT, {})[at] is True
        assert paste_updates(runtime, panel, PLAIN_INFOTEXT, {})[at] is False
    names = I.IMG2IMG_FIELDS
    assert F.fields_from_infotext(TILED_INFOTEXT, runtime.settings.current,
                                  names=names)["tiling"] is True
