"""The ControlNet units in the txt2img/img2img UI, without a browser: widget values ->
unit dict -> `ControlNetUnit` (the API's parser), what the UI refuses naming the unit,
the sliders per preprocessor, the Control Type filter, infotext paste, and the accordion
built by `webui/script_ui.py` from the extension's own `ui()`."""

from __future__ import annotations

import base64
import io

import gradio as gr
import pytest
from PIL import Image

from modules.infotext import parse_infotext
from tests.helpers.controlnet import use_extension_package
from tests.helpers.webui_runtime import make_runtime
from webui.script_ui import build_scripts

use_extension_package()

from easel_controlnet import ui_spec  # noqa: E402
from easel_controlnet.units import ControlNetUnit  # noqa: E402

DEFAULTS = {"enabled": False, "image": None, "pixel_perfect": False, "module": "none",
            "model": "None", "weight": 1.0, "guidance_start": 0.0, "guidance_end": 1.0,
            "processor_res": 512, "threshold_a": -1, "threshold_b": -1,
            "control_mode": "Balanced", "resize_mode": "Crop and Resize"}


def circle() -> Image.Image:
    picture = Image.new("RGB", (64, 64))
    from PIL import ImageDraw

    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill=(255, 255, 255))
    return picture


def test_widget_values_become_the_api_unit() -> None:
    values = {**DEFAULTS, "enabled": True, "image": circle(), "module": "canny",
              "model": "easel-demo-silhouette [12345678]", "weight": 0.8,
              "guidance_start": 0.1, "guidance_end": 0.9, "processor_res": 256.0,
              "threshold_a": 50, "threshold_b": 150, "control_mode": "ControlNet is more important",
              "resize_mode": "Just Resize"}
    unit = ControlNetUnit.parse_arg(ui_spec.unit_dict(values))
    assert unit == ControlNetUnit(
        enabled=True, module="canny", model="easel-demo-silhouette [12345678]", weight=0.8,
        image=unit.image, guidance_start=0.1, guidance_end=0.9, processor_res=256,
        threshold_a=50.0, threshold_b=150.0, control_mode="ControlNet is more important",
        resize_mode="Just Resize")
    decoded = Image.open(io.BytesIO(base64.b64decode(unit.image)))
    assert decoded.size == (64, 64) and decoded.getpixel((32, 32)) == (255, 255, 255)


def test_hidden_sliders_are_sent_as_defaults() -> None:
    # "none" has no resolution or thresholds; pixel perfect hides the resolution.
    unit = ui_spec.unit_dict({**DEFAULTS, "enabled": True, "threshold_a": 9})
    assert (unit["processor_res"], unit["threshold_a"], unit["threshold_b"]) == (-1, -1, -1)
    unit = ui_spec.unit_dict({**DEFAULTS, "module": "threshold", "pixel_perfect": True,
                              "threshold_a": 100, "threshold_b": 7})
    assert (unit["processor_res"], unit["threshold_a"], unit["threshold_b"]) == (-1, 100, -1)
    assert unit["image"] is None and unit["model"] == "None"


def test_sliders_follow_the_preprocessor() -> None:
    res, a, b = ui_spec.sliders_for("canny")
    assert res.visible and (res.label, res.value, res.minimum, res.maximum) == (
        "Preprocessor Resolution", 512, 64, 2048)
    assert (a.label, a.value, a.maximum) == ("Low Threshold", 100, 255)
    assert (b.label, b.value) == ("High Threshold", 200)
    res, a, b = ui_spec.sliders_for("canny", pixel_perfect=True)
    assert not res.visible and a.visible
    assert [s.visible for s in ui_spec.sliders_for("none")] == [False, False, False]
    assert [s.visible for s in ui_spec.sliders_for("inpaint")] == [False, False, False]


def test_control_type_filters_preprocessors_and_models() -> None:
    modules = ["none", "invert", "canny", "threshold", "tile_resample"]
    models = ["control_v11p_sd15_canny [aaaa]", "easel-demo-silhouette [bbbb]"]
    canny = ui_spec.type_choices("Canny", modules, models)
    assert canny["module_list"] == ["none", "canny", "invert"]
    assert canny["model_list"] == ["None", "control_v11p_sd15_canny [aaaa]"]
    assert canny["default_option"] == "canny"
    assert canny["default_model"] == "control_v11p_sd15_canny [aaaa]"
    everything = ui_spec.type_choices("All", modules, models)
    assert everything["model_list"] == ["None", *models]
    assert "Canny" in ui_spec.control_type_names(modules, models)


@pytest.mark.parametrize("change, is_img2img, message", [
    ({"model": "None"}, False, "ControlNet Unit 1: Model: choose a model"),
    ({"image": None}, False, "ControlNet Unit 1: Image: an enabled unit needs a picture"),
    ({"weight": 3.0}, False, "ControlNet Unit 1: weight: 3.0 is outside [0.0, 2.0]"),
])
def test_the_ui_refuses_a_unit_naming_it(change, is_img2img, message) -> None:
    good = ui_spec.unit_dict({**DEFAULTS, "enabled": True, "image": circle(),
                              "model": "easel-demo-silhouette"})
    units = {"unit_0": ui_spec.unit_dict(DEFAULTS), "unit_1": {**good, **change},
             "unit_2": ui_spec.unit_dict(DEFAULTS)}
    with pytest.raises(ValueError) as caught:
        ui_spec.check_units(units, is_img2img=is_img2img)
    assert str(caught.value).startswith(message)


def test_img2img_unit_without_picture_uses_the_init_image() -> None:
    unit = ui_spec.unit_dict({**DEFAULTS, "enabled": True, "model": "easel-demo-silhouette"})
    ui_spec.check_units({"unit_0": unit}, is_img2img=True)  # no error: the backend falls back
    with pytest.raises(ValueError, match="Unit 0: Image"):
        ui_spec.check_units({"unit_0": unit}, is_img2img=False)


def test_infotext_round_trips_to_the_same_unit() -> None:
    unit = ControlNetUnit(enabled=True, module="canny", model="easel-demo-silhouette [abcd]",
                          weight=0.65, processor_res=384, threshold_a=80.0, threshold_b=160.0,
                          guidance_start=0.2, guidance_end=0.7, pixel_perfect=True,
                          control_mode="My prompt is more important", resize_mode="Just Resize")
    text = f'Steps: 2, ControlNet 0: "{unit.infotext()}", Version: 1'
    pasted = ui_spec.unit_from_infotext(parse_infotext(text)["ControlNet 0"])
    assert ControlNetUnit.parse_arg(pasted) == unit


def test_infotext_of_the_extension_with_extra_keys() -> None:
    text = ("Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, "
            "Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, "
            "Threshold A: 100, Threshold B: 200, Guidance Start: 0, Guidance End: 1, "
            "Pixel Perfect: False, Control Mode: Balanced, Hr Option: Both, "
            "Save Detected Map: True")
    unit = ControlNetUnit.parse_arg(ui_spec.unit_from_infotext(text))
    assert (unit.module, unit.model, unit.weight, unit.threshold_b) == (
        "canny", "control_v11p_sd15_canny [d14c016b]", 1.0, 200.0)
    assert ui_spec.unit_from_infotext("Weight: 1") is None  # names no module or model
    bad = ui_spec.unit_from_infotext("Module: none, Weight: x, Control Mode: Loud")
    assert bad == {"enabled": True, "module": "none"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("controlnet-ui"), load=False)
    yield rt
    rt.jobs.stop()


def controlnet_controls(runtime, is_img2img: bool):
    with gr.Blocks():
        ui = build_scripts(runtime, "img2img" if is_img2img else "txt2img",
                           is_img2img=is_img2img)
    titles = [c.title for c in ui.alwayson]
    assert "ControlNet" in titles
    return ui, ui.alwayson[titles.index("ControlNet")]


def test_accordion_sends_each_units_state_and_checks_it(runtime) -> None:
    ui, controls = controlnet_controls(runtime, is_img2img=False)
    assert controls.names == ["unit_0", "unit_1", "unit_2"]
    assert all(isinstance(w, gr.JSON) for w in controls.widgets)
    start = len(ui.inputs()) - len(ui.alwayson_widgets())
    values = ["None", *[None] * (start - 1)]
    enabled = ui_spec.unit_dict({**DEFAULTS, "enabled": True, "image": circle(),
                                 "model": "easel-demo-silhouette"})
    for other in ui.alwayson:
        values += ([w.value for w in other.widgets] if other is not controls
                   else [w.value for w in other.widgets[:2]] + [enabled])
    request = ui.request(values)
    assert request["alwayson_scripts"]["ControlNet"]["args"]["unit_2"] == enabled
    values[-1] = {**enabled, "model": "None"}
    with pytest.raises(gr.Error, match="ControlNet: ControlNet Unit 2: Model"):
        ui.request(values)


def test_paste_gives_the_unit_its_raw_infotext(runtime) -> None:
    ui, controls = controlnet_controls(runtime, is_img2img=True)
    text = ('a cat\nSteps: 2, Sampler: Euler, Seed: 1, ControlNet 1: "Module: none, Model: '
            'easel-demo-silhouette, '
            'Weight: 0.5"')
    updates = ui.paste_updates(text)
    offset = sum(len(c.widgets) for c in ui.alwayson[:ui.alwayson.index(controls)])
    mine = updates[offset:offset + 3]
    assert mine[1] == {"infotext": "Module: none, Model: easel-demo-silhouette, Weight: 0.5"}
    assert mine[0] == gr.skip() and mine[2] == gr.skip()  # units not in the text: kept
    assert ui_spec.unit_from_infotext(mine[1]["infotext"])["weight"] == 0.5


def test_preview_runs_the_detect_code_and_names_the_unit() -> None:
    from easel_controlnet.ui import preview_map

    shown = preview_map(2, circle(), "none", 512, 0, 0, False, None)
    assert shown.shape == (64, 64, 3) and shown.dtype.name == "uint8"
    assert tuple(shown[32, 32]) == (255, 255, 255) and tuple(shown[2, 2]) == (0, 0, 0)
    edges = preview_map(2, circle(), "canny", 64, 100, 200, False, None)
    assert edges.shape[:2] == (64, 64) and edges[32, 32].max() == 0 and edges.max() == 255
    with pytest.raises(gr.Error, match="ControlNet Unit 2: Image"):
        preview_map(2, None, "none", 512, 0, 0, False, None)
    with pytest.raises(gr.Error, match="ControlNet Unit 1: Preprocessor: .*embedding"):
        preview_map(1, circle(), "ip-adapter_clip_sd15", 512, 0, 0, False, None)
    with pytest.raises(gr.Error, match="ControlNet Unit 0: Preprocessor: .*depth_midas"):
        preview_map(0, circle(), "depth_midas", 512, 0, 0, False, None)
