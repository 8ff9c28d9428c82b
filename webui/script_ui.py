"""The "Script" dropdown of a generation tab and the selected script's own controls.

Controls come from the script's typed `Args` (`modules.scripts.args.arg_specs`): a
checkbox for a bool, a slider for a bounded number, a dropdown for declared choices,
a multi-select for a list, a text box for the rest. A script that builds its own
Gradio controls (`Script.ui` overridden, one component per `Args` field) gets those
instead. A script may also give UI hints without importing a UI library:
`ui_dropdowns()` (fields shown as dropdowns although the API takes more, such as the
X/Y/Z plot's axis types, which also take A1111's indices) and `ui_value_helpers()`
(a values field and the field whose `value_choices` a 📒 button fills it with).
Every script's controls are built once, hidden, and the dropdown shows the
chosen script's group; the handler sends only that script's values, by field name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.scripts.args import ArgSpec, arg_specs
from modules.scripts.base import Script
from webui.fields import as_int
from webui.widgets import tool_button

log = logging.getLogger(__name__)
NO_SCRIPT = "None"


@dataclass
class ScriptControls:
    title: str
    group: Any
    names: list[str] = field(default_factory=list)  # the Args fields the widgets feed
    widgets: list[Any] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)


@dataclass
class ScriptsUI:
    dropdown: gr.Dropdown
    controls: list[ScriptControls]

    def inputs(self) -> list[Any]:
        """The dropdown, then every script's widgets (the handler's trailing inputs)."""
        return [self.dropdown, *[w for c in self.controls for w in c.widgets]]

    def request(self, values: list[Any]) -> dict[str, Any]:
        """`script_name` / `script_args` from the values of `inputs()`."""
        title, rest = values[0], list(values[1:])
        chosen: dict[str, Any] = {}
        for controls in self.controls:
            count = len(controls.widgets)
            own, rest = rest[:count], rest[count:]
            if controls.title == title:
                chosen = {name: arg_value(kind, value)
                          for name, kind, value in zip(controls.names, controls.kinds, own)}
        if not title or title == NO_SCRIPT:
            return {"script_name": None, "script_args": {}}
        return {"script_name": title, "script_args": chosen}


def arg_value(kind: str, value: Any) -> Any:
    """Numbers from Gradio arrive as floats; an integer argument gets an int."""
    if kind == "int":
        return as_int(value)
    return value


def build_scripts(runtime, prefix: str, *, is_img2img: bool) -> ScriptsUI | None:
    registry = runtime.extensions
    scripts = registry.selectable(is_img2img) if registry is not None else []
    titles = [script.title() for script in scripts]
    dropdown = gr.Dropdown([NO_SCRIPT, *titles], value=NO_SCRIPT, label="Script",
                           elem_id=f"{prefix}_script")
    controls = [_script_group(script, runtime, prefix, is_img2img) for script in scripts]
    ui = ScriptsUI(dropdown=dropdown, controls=controls)
    dropdown.change(lambda title: [gr.update(visible=c.title == title) for c in controls],
                    dropdown, [c.group for c in controls], queue=False)
    return ui


def _script_group(script: Script, runtime, prefix: str, is_img2img: bool) -> ScriptControls:
    title = script.title()
    slug = "".join(ch if ch.isalnum() else "_" for ch in title.lower())
    with gr.Group(visible=False, elem_id=f"{prefix}_script_{slug}") as group:
        controls = ScriptControls(title=title, group=group)
        specs = arg_specs(script.Args)
        own = _own_ui(script, is_img2img, len(specs))
        dropdowns = _hook(script, "ui_dropdowns")
        helpers = _hook(script, "ui_value_helpers")
        fills: dict[str, Any] = {}
        for spec, widget in zip(specs, own or [None] * len(specs)):
            elem_id = f"{prefix}_script_{slug}_{spec.name}"
            if not own and spec.name in helpers:
                with gr.Row(equal_height=True):
                    widget = control_for(spec, elem_id)
                    fills[spec.name] = tool_button(FILL_SYMBOL, elem_id=f"{elem_id}_fill",
                                                   visible=False)
            elif not own and spec.name in dropdowns:
                widget = gr.Dropdown(list(dropdowns[spec.name]), value=spec.default,
                                     label=spec.label, elem_id=elem_id)
            else:
                widget = widget if own else control_for(spec, elem_id)
            if widget is not None:
                controls.names.append(spec.name)
                controls.kinds.append(spec.kind)
                controls.widgets.append(widget)
        _wire_fills(script, runtime, controls, fills, helpers)
    return controls


def _hook(script: Script, name: str) -> dict[str, Any]:
    """A script's optional UI hint (`ui_dropdowns`, `ui_value_helpers`): {} if absent."""
    method = getattr(script, name, None)
    return dict(method()) if callable(method) else {}


def _wire_fills(script: Script, runtime, controls: ScriptControls, fills: dict[str, Any],
                helpers: dict[str, str]) -> None:
    """Each 📒 button fills its values box with every valid choice of the axis type
    chosen beside it (A1111's "fill" button), and shows only for a type that has a list."""
    if not fills:
        return
    widgets = dict(zip(controls.names, controls.widgets))
    for values_name, button in fills.items():
        type_widget = widgets[helpers[values_name]]

        def choices(kind, script=script):
            return script.value_choices(runtime, kind)

        def fill(kind, choices=choices):
            return script.join_choices(choices(kind))

        button.click(fill, type_widget, widgets[values_name], queue=False)
        type_widget.change(lambda kind, choices=choices: gr.update(visible=bool(choices(kind))),
                           type_widget, button, queue=False)
    ids = [button.elem_id for button in fills.values()]
    gr.HTML("", container=False, padding=False, visible="hidden",
            js_on_load=_TITLES_JS.replace("__IDS__", json.dumps(ids))
                                 .replace("__TITLE__", json.dumps(FILL_TITLE)))


FILL_SYMBOL = "\U0001f4d2"  # 📒
FILL_TITLE = "Fill in all valid values for this axis type"
# Gradio buttons take no `title`: this sets the tooltip (and the screen readers' label)
# of the fill buttons once they are on the page; they mount when the script is chosen.
_TITLES_JS = """
const ids = __IDS__, title = __TITLE__;
const mark = () => ids.forEach((id) => {
  const button = document.getElementById(id);
  if (button && button.title !== title) {
    button.title = title;
    button.setAttribute("aria-label", title);
  }
});
mark();
new MutationObserver(mark).observe(element.closest(".gradio-container") || document.body,
                                   {childList: true, subtree: true});
"""


def _own_ui(script: Script, is_img2img: bool, count: int) -> list | None:
    """The script's own controls, if it builds them (one per field); else None."""
    if getattr(type(script).ui, "__func__", type(script).ui) is Script.ui:
        return None
    try:
        widgets = list(script.ui(is_img2img) or [])
    except Exception as error:  # an extension's broken UI must not break the page
        log.error("ui() of script %r failed: %s", script.title(), error)
        gr.HTML(f"<p>This script's controls failed to build: {error}</p>")
        return None
    if len(widgets) != count:
        log.error("ui() of script %r returned %d controls for %d arguments", script.title(),
                  len(widgets), count)
        return None
    return widgets


def control_for(spec: ArgSpec, elem_id: str) -> Any:
    """The widget for one argument (None for one with no default to show, e.g. an
    ignored "info" slot)."""
    common = dict(label=spec.label, elem_id=elem_id)
    if spec.choices:
        multi = spec.kind == "list"
        return gr.Dropdown(list(spec.choices), value=spec.default, multiselect=multi, **common)
    if spec.kind == "bool":
        return gr.Checkbox(value=bool(spec.default), **common)
    if spec.kind in ("int", "float"):
        if spec.minimum is not None and spec.maximum is not None:
            step = spec.step or (1 if spec.kind == "int" else 0.01)
            return gr.Slider(spec.minimum, spec.maximum, value=spec.default, step=step, **common)
        return gr.Number(value=spec.default, precision=0 if spec.kind == "int" else None,
                         **common)
    if spec.kind == "list":
        return gr.Dropdown(list(spec.default or []), value=list(spec.default or []),
                           multiselect=True, allow_custom_value=True, **common)
    if spec.default is None:
        return None
    if isinstance(spec.default, (int, float)) and not isinstance(spec.default, bool):
        return gr.Number(value=spec.default, **common)
    return gr.Textbox(value=str(spec.default), lines=3 if "txt" in spec.name else 1, **common)
