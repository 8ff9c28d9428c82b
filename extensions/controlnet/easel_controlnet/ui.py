"""The ControlNet units' Gradio controls (built by `webui/` through `Script.ui`).

One tab per unit with sd-webui-controlnet's controls; the values they hold are turned
into the unit dict of the API (`ui_spec.unit_dict`) and kept in one hidden `gr.JSON`
per unit, which is what `Script.ui` returns (one component per `Args` field), so the
generation request carries `alwayson_scripts.controlnet` units exactly as an API client
sends them. Pasting an infotext sets a unit's state to `{"infotext": <the raw
`ControlNet <i>` text>}` (`webui/script_ui.py`); its change handler fills the tab's
widgets from it (`ui_spec.unit_from_infotext`).

Gradio is imported here only; nothing in `modules/` imports this file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from easel_controlnet import ui_spec
from easel_controlnet.library import Folders, KindCache, list_models
from easel_controlnet.preprocessors import (
    PreprocessorError,
    all_preprocessors,
    canonical_module,
    preprocessor_names,
)
from easel_controlnet.units import CONTROL_MODES, RESIZE_MODES, ControlNetUnit

PREVIEW_SYMBOL = "\U0001f4a5"  # 💥
REFRESH_SYMBOL = "\U0001f504"  # 🔄


def _tool(symbol: str, elem_id: str) -> gr.Button:
    """A square emoji button (the web UI's `button.tool` style)."""
    return gr.Button(symbol, elem_id=elem_id, elem_classes=["tool"], size="sm", min_width=40,
                     scale=0, variant="secondary")


def model_names(model_dir: Folders, kinds: KindCache | None = None) -> list[str]:
    return [entry.name for entry in list_models(model_dir, kinds)]


def slider_updates(module: str, pixel_perfect: bool, values: list | None = None) -> list:
    """Resolution / threshold A / threshold B updates for `module` (defaults, or
    `values` where given, e.g. pasted ones)."""
    specs = ui_spec.sliders_for(module, pixel_perfect=pixel_perfect)
    updates = []
    for index, spec in enumerate(specs):
        value = values[index] if values is not None and values[index] not in (None, -1) \
            else spec.value
        updates.append(gr.update(visible=spec.visible, label=spec.label or None,
                                 minimum=spec.minimum, maximum=spec.maximum, value=value)
                       if spec.visible else gr.update(visible=False))
    return updates


def preview_map(index: int, picture, module: str, resolution, a, b, pixel_perfect: bool,
                annotator_dir: Path | None) -> np.ndarray:
    """The preprocessor's map of the unit's picture (the `/controlnet/detect` code)."""
    from easel_controlnet.prepare import detect_map  # torch: only when previewing

    label = f"ControlNet Unit {index}"
    if picture is None:
        raise gr.Error(f"{label}: Image: upload a picture to preview its map")
    entry = all_preprocessors().get(canonical_module(module or "none"))
    if entry is not None and getattr(entry, "embeds", False):
        raise gr.Error(f"{label}: Preprocessor: {entry.name} makes a CLIP image embedding "
                       f"(IP-Adapter, style adapter), not a map to preview")
    shown = ui_spec.sliders_for(module, pixel_perfect=pixel_perfect)
    values = [v if s.visible and v is not None else -1
              for s, v in zip(shown, (resolution, a, b))]
    try:
        unit = ControlNetUnit(module=canonical_module(module), threshold_a=values[1],
                              threshold_b=values[2])
        detected = detect_map(unit, picture, annotator_dir=annotator_dir,
                              resolution=int(values[0]))
    except (PreprocessorError, ValueError) as error:
        raise gr.Error(f"{label}: Preprocessor: {error}") from None
    return (np.clip(detected, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def unit_tabs(script, is_img2img: bool) -> list:
    """One tab per unit of `script.Args`; returns each unit's hidden state."""
    from dataclasses import fields

    paths = getattr(script.context, "paths", None)
    model_dir = paths.controlnet_dir if paths is not None else None
    annotator_dir = model_dir / "annotators" if model_dir is not None else None
    prefix = "img2img" if is_img2img else "txt2img"
    count = len(fields(script.Args))
    kinds = KindCache()  # each model file's header read once for the tabs' listings
    states = []
    with gr.Tabs(elem_id=f"{prefix}_controlnet_tabs"):
        for index in range(count):
            with gr.Tab(f"ControlNet Unit {index}", elem_id=f"{prefix}_controlnet_unit{index}"):
                states.append(_unit(index, f"{prefix}_controlnet_unit{index}",
                                    _Folders(paths.controlnet_dirs if paths else None,
                                             annotator_dir, kinds), is_img2img))
    return states


@dataclass(frozen=True)
class _Folders:
    models: Folders
    annotators: Path | None
    kinds: KindCache


def _unit(index: int, eid: str, folders: _Folders, is_img2img: bool) -> Any:
    modules = list(preprocessor_names())

    def listed() -> list[str]:
        return model_names(folders.models, folders.kinds)

    models = listed()
    with gr.Row(equal_height=True):
        image = gr.Image(label="Image", type="pil", sources=["upload", "clipboard"],
                         image_mode="RGB", height=220, elem_id=f"{eid}_image")
        preview = gr.Image(label="Preprocessor Preview", interactive=False, height=220,
                           elem_id=f"{eid}_preview")
    if is_img2img:
        gr.Markdown("Without a picture the unit uses the img2img image.",
                    elem_classes=["controlnet-note"])
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", elem_id=f"{eid}_enabled")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", elem_id=f"{eid}_pixel_perfect")
    control_type = gr.Radio(ui_spec.control_type_names(modules, models), value="All",
                            label="Control Type", elem_id=f"{eid}_control_type")
    with gr.Row():
        with gr.Row(equal_height=True):
            module = gr.Dropdown(modules, value="none", label="Preprocessor",
                                 elem_id=f"{eid}_module")
            preview_button = _tool(PREVIEW_SYMBOL, f"{eid}_preview_button")
        with gr.Row(equal_height=True):
            model = gr.Dropdown([ui_spec.NO_MODEL, *models], value=ui_spec.NO_MODEL,
                                label="Model", allow_custom_value=True, elem_id=f"{eid}_model")
            refresh = _tool(REFRESH_SYMBOL, f"{eid}_refresh")
    weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight",
                       elem_id=f"{eid}_weight")
    with gr.Row():
        start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                          elem_id=f"{eid}_guidance_start")
        end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                        elem_id=f"{eid}_guidance_end")
    sliders = [gr.Slider(64, 2048, value=512, step=1, visible=False, label="Preprocessor "
                         "Resolution", elem_id=f"{eid}_processor_res"),
               gr.Slider(0, 1, value=0, visible=False, label="Threshold A",
                         elem_id=f"{eid}_threshold_a"),
               gr.Slider(0, 1, value=0, visible=False, label="Threshold B",
                         elem_id=f"{eid}_threshold_b")]
    control_mode = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control Mode",
                            elem_id=f"{eid}_control_mode")
    resize_mode = gr.Radio(list(RESIZE_MODES), value="Crop and Resize", label="Resize Mode",
                           elem_id=f"{eid}_resize_mode")
    widgets = [enabled, image, pixel_perfect, module, model, weight, start, end, *sliders,
               control_mode, resize_mode]  # ui_spec.WIDGETS order
    # The unit's API dict, on the page but not shown: pasting sets it to the raw infotext
    # text and its change handler (which a `gr.State` would not get after a direct,
    # unqueued event such as the paste button) fills the widgets in.
    defaults = {"enabled": False, "module": "none", "model": ui_spec.NO_MODEL, "weight": 1.0,
                "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": CONTROL_MODES[0],
                "resize_mode": "Crop and Resize"}
    state = gr.JSON(ui_spec.unit_dict(defaults), visible="hidden", elem_id=f"{eid}_value")

    def to_state(*values):
        return ui_spec.unit_dict(dict(zip(ui_spec.WIDGETS, values)))

    for widget in widgets:
        widget.change(to_state, widgets, state, queue=False, show_progress="hidden")

    def choose_type(kind):
        choice = ui_spec.type_choices(kind, modules, listed())
        return [gr.update(choices=choice["module_list"], value=choice["default_option"]),
                gr.update(choices=choice["model_list"], value=choice["default_model"]),
                *slider_updates(choice["default_option"], False)]

    control_type.input(choose_type, control_type, [module, model, *sliders], queue=False)
    module.input(lambda name, pp: slider_updates(name, pp), [module, pixel_perfect], sliders,
                 queue=False)
    pixel_perfect.input(lambda name, pp: slider_updates(name, pp)[:1], [module, pixel_perfect],
                        sliders[:1], queue=False)

    def refresh_models(kind, current):
        choices = ui_spec.type_choices(kind, modules, listed())["model_list"]
        return gr.update(choices=choices, value=current if current in choices else choices[0])

    refresh.click(refresh_models, [control_type, model], model, queue=False)
    preview_button.click(
        lambda picture, name, res, a, b, pp: preview_map(index, picture, name, res, a, b, pp,
                                                         folders.annotators),
        [image, module, *sliders, pixel_perfect], preview, show_progress="minimal")

    def pasted(value, picture):
        """A pasted `ControlNet <i>` text -> the tab's widgets and the state from them."""
        text = value.get("infotext") if isinstance(value, dict) and len(value) == 1 else None
        unit = ui_spec.unit_from_infotext(text) if isinstance(text, str) else None
        if unit is None:
            return [gr.skip()] * 14
        name = canonical_module(unit.get("module", "none"))
        pp = unit.get("pixel_perfect", False)
        values = {"enabled": True, "image": picture, "pixel_perfect": pp, "module": name,
                  "model": unit.get("model", ui_spec.NO_MODEL),
                  "weight": unit.get("weight", 1.0),
                  "guidance_start": unit.get("guidance_start", 0.0),
                  "guidance_end": unit.get("guidance_end", 1.0),
                  "control_mode": unit.get("control_mode", CONTROL_MODES[0]),
                  "resize_mode": unit.get("resize_mode", "Crop and Resize")}
        sliders_shown = ui_spec.sliders_for(name, pixel_perfect=pp)
        for key, spec in zip(("processor_res", "threshold_a", "threshold_b"), sliders_shown):
            value = unit.get(key)
            values[key] = value if value not in (None, -1) else spec.value
        return [True, pp, gr.update(choices=modules, value=name),
                gr.update(choices=[ui_spec.NO_MODEL, *listed()],
                          value=values["model"]),
                values["weight"], values["guidance_start"], values["guidance_end"],
                *slider_updates(name, pp, [values["processor_res"], values["threshold_a"],
                                           values["threshold_b"]]),
                values["control_mode"], values["resize_mode"], "All",
                ui_spec.unit_dict(values)]

    state.change(pasted, [state, image],
                 [enabled, pixel_perfect, module, model, weight, start, end, *sliders,
                  control_mode, resize_mode, control_type, state], queue=False)
    return state
