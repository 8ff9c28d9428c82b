"""Per-family UI presets: sampler, schedule, steps and CFG follow the loaded model.

Forge switches these when the model's kind changes (Flux.1 dev: Euler / Simple, 20 steps,
CFG 1, Distilled CFG 3.5; schnell: 4 steps, CFG 1; SD3.x: its own steps and CFG). Here,
on page load and whenever the checkpoint changes, each of those widgets (txt2img and
img2img) takes the loaded flow family's `family.defaults`, or the page's own default for
an SD1 / SD2 / SDXL model, but only when the user has not changed it: its value is still
the page's default or some flow family's default. The HTTP API keeps A1111's defaults
(docs/a1111-semantics.md).

While the shipped demo model is loaded, a one-line note beside the hires-fix options says
what it can do (it draws at 64 px; a larger pass redraws its shapes), so a blurred or
changed hires picture reads as the demo's limit rather than a bug.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import gradio as gr

from modules.models.flow_families import FLOW_FAMILIES
from modules.models.manager import DEMO_MODEL_STEM
from webui.widgets import loaded_model

DEMO_NOTE_CLASS = "demo-model-note"
DEMO_NOTE = ("Note: the Easel demo model draws at 64×64 px. Hires. fix and the ✨ Upscale "
             "button redraw its shapes at larger sizes rather than sharpen them; load a real "
             "checkpoint for detailed large pictures.")

# The widgets a preset sets, as the flow families' `GenerationDefaults` names them.
PRESET_FIELDS = {"sampler_name": "sampler", "scheduler": "scheduler", "steps": "steps",
                 "cfg_scale": "cfg_scale", "distilled_cfg_scale": "distilled_cfg_scale"}


def family_preset(family) -> dict[str, Any]:
    """Widget name -> value of a flow family's defaults ({} for other families)."""
    defaults = getattr(family, "defaults", None)
    if defaults is None:
        return {}
    values = {name: getattr(defaults, attribute) for name, attribute in PRESET_FIELDS.items()}
    return {name: value for name, value in values.items() if value is not None}


def untouched(name: str, value: Any, page_default: Any) -> bool:
    """Whether a widget still holds a value nobody chose: the page's or a family's default."""
    presets = [family_preset(family).get(name) for family in FLOW_FAMILIES]
    return value == page_default or value in [v for v in presets if v is not None]


def preset_updates(runtime, values: Mapping[str, Any], page: Mapping[str, Any]) -> dict:
    """Widget name -> new value (or `gr.skip()`): the loaded family's preset where untouched."""
    loaded = loaded_model(runtime)
    if loaded is None:
        return {name: gr.skip() for name in values}
    target = {**page, **family_preset(loaded.family)}
    return {name: (target[name] if value != target[name] and untouched(name, value, page[name])
                   else gr.skip()) for name, value in values.items()}


def size_step(runtime) -> int:
    """Width / height step of the loaded family (8 px, or its `size_multiple`)."""
    loaded = loaded_model(runtime)
    return getattr(loaded.family, "size_multiple", 8) if loaded is not None else 8


def demo_loaded(runtime) -> bool:
    """Whether the loaded model is the shipped demo (by its file's stem, as the manager)."""
    loaded = loaded_model(runtime)
    return loaded is not None and loaded.info.stem == DEMO_MODEL_STEM


def build_demo_note(runtime, prefix: str) -> gr.Markdown:
    """The demo model's note; `wire_family_defaults` finds it by its class and keeps its
    visibility in step with the loaded model."""
    return gr.Markdown(DEMO_NOTE, visible=demo_loaded(runtime), elem_id=f"{prefix}_demo_note",
                       elem_classes=[DEMO_NOTE_CLASS])


def demo_notes(blocks: gr.Blocks) -> list:
    return [block for block in blocks.blocks.values()
            if DEMO_NOTE_CLASS in (getattr(block, "elem_classes", None) or [])]


def wire_family_defaults(runtime, blocks: gr.Blocks, checkpoint: gr.Dropdown,
                         panels: list) -> None:
    """On page load and on every checkpoint change, the loaded family's preset (and the
    demo model's note shown or hidden)."""
    targets = [(name, panel.fields[name]) for panel in panels for name in PRESET_FIELDS
               if name in panel.fields]
    widgets = [widget for _, widget in targets]
    page = [widget.value for widget in widgets]  # the values the page was built with

    def apply(*values) -> list:
        return [preset_updates(runtime, {name: value}, {name: default})[name]
                for (name, _), value, default in zip(targets, values, page, strict=True)]

    blocks.load(apply, widgets, widgets, queue=False, show_progress="hidden")
    checkpoint.change(apply, widgets, widgets, queue=False, show_progress="hidden")
    sizes = [panel.fields[name] for panel in panels for name in ("width", "height")
             if name in panel.fields]
    if sizes:  # the sliders step on the loaded family's grid: 16 px for SD3 / Flux.1
        def size_steps() -> list:
            return [gr.update(step=size_step(runtime))] * len(sizes)

        blocks.load(size_steps, None, sizes, queue=False, show_progress="hidden")
        checkpoint.change(size_steps, None, sizes, queue=False, show_progress="hidden")
    notes = demo_notes(blocks)
    if notes:
        def show_notes():
            update = gr.update(visible=demo_loaded(runtime))
            return update if len(notes) == 1 else [update] * len(notes)  # one output: no list

        blocks.load(show_notes, None, notes, queue=False, show_progress="hidden")
        checkpoint.change(show_notes, None, notes, queue=False, show_progress="hidden")
