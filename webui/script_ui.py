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

Always-on scripts (`Script.show` returns `AlwaysVisible`) get one closed accordion each,
just above the dropdown (where A1111 puts them), with the same controls (a bool `enabled`
field first). Every generation sends all of their values as `alwayson_scripts`; the
script's own `enabled` decides whether it acts. Paste (↙️) and "Send to" set them from
the infotext keys the script declares (`Script.infotext_fields`). A script with an
argument these controls cannot show gets no accordion, unless its own `ui()` builds one
component per field (ControlNet: one hidden `gr.JSON` per unit holding the unit's API
dict, fed by the unit's tab); such a structured field's component gets
`{"infotext": <its key's raw text>}` when pasting (its own change handler reads it),
and the script's optional `ui_check(args, is_img2img)` refuses values before the job
is queued (a ValueError, shown naming the script).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.infotext import parse_infotext
from modules.pipeline.infotext_fields import infotext_to_alwayson
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
    script: Script | None = None  # always-on controls: the script, for pasting infotext

    def args(self, values: list[Any]) -> dict[str, Any]:
        """The widgets' values as the script's arguments, by field name."""
        return {name: arg_value(kind, value)
                for name, kind, value in zip(self.names, self.kinds, values)}


@dataclass
class ScriptsUI:
    dropdown: gr.Dropdown
    controls: list[ScriptControls]
    alwayson: list[ScriptControls] = field(default_factory=list)  # one per accordion
    is_img2img: bool = False

    def alwayson_widgets(self) -> list[Any]:
        return [w for c in self.alwayson for w in c.widgets]

    def inputs(self) -> list[Any]:
        """The dropdown, then every selectable script's widgets, then the always-on
        scripts' widgets (the handler's trailing inputs)."""
        return [self.dropdown, *[w for c in self.controls for w in c.widgets],
                *self.alwayson_widgets()]

    def request(self, values: list[Any]) -> dict[str, Any]:
        """`script_name` / `script_args` (and `alwayson_scripts`, with always-on
        accordions) from the values of `inputs()`."""
        title, rest = values[0], list(values[1:])
        chosen: dict[str, Any] = {}
        for controls in self.controls:
            count = len(controls.widgets)
            own, rest = rest[:count], rest[count:]
            if controls.title == title:
                chosen = controls.args(own)
        request: dict[str, Any] = {"script_name": None, "script_args": {}}
        if title and title != NO_SCRIPT:
            request = {"script_name": title, "script_args": chosen}
        if self.alwayson:
            request["alwayson_scripts"] = self.alwayson_request(rest)
        return request

    def alwayson_request(self, values: list[Any]) -> dict[str, Any]:
        """`{title: {"args": {...}}}` for every accordion, from its widgets' values."""
        entries: dict[str, Any] = {}
        for controls in self.alwayson:
            count = len(controls.widgets)
            own, values = values[:count], values[count:]
            args = controls.args(own)
            check = getattr(controls.script, "ui_check", None)
            if callable(check):
                try:
                    check(args, self.is_img2img)
                except ValueError as error:
                    raise gr.Error(f"{controls.title}: {error}") from None
            entries[controls.title] = {"args": args}
        return entries

    def paste_updates(self, text: str | None) -> list[Any]:
        """One update per always-on widget for pasting `text`: the value its script's
        infotext key carries, or `gr.skip()` (kept as it is) where the key is absent."""
        widgets = self.alwayson_widgets()
        if not text or not widgets:
            return [gr.skip()] * len(widgets)
        parsed = parse_infotext(text)
        found = infotext_to_alwayson(parsed, [c.script for c in self.alwayson])
        updates = []
        for controls in self.alwayson:
            args = found.get(controls.title, {}).get("args", {})
            raw = structured_infotext(controls, parsed)
            updates.extend(args[name] if name in args else raw.get(name, gr.skip())
                           for name in controls.names)
        return updates


def structured_infotext(controls: ScriptControls, parsed: dict[str, Any]) -> dict[str, dict]:
    """`{"infotext": raw text}` for the fields no plain control shows (a ControlNet
    unit's `ControlNet 0` value), for the script's own component to read."""
    keys = _hook(controls.script, "infotext_fields") if controls.script else {}
    plain = {name for name, kind in zip(controls.names, controls.kinds)
             if kind in RENDERED_KINDS}
    return {name: {"infotext": str(parsed[key])} for name, key in keys.items()
            if name not in plain and key in parsed}


def arg_value(kind: str, value: Any) -> Any:
    """Numbers from Gradio arrive as floats; an integer argument gets an int."""
    if kind == "int":
        return as_int(value)
    return value


def build_scripts(runtime, prefix: str, *, is_img2img: bool) -> ScriptsUI | None:
    registry = runtime.extensions
    alwayson = build_alwayson(registry, prefix, is_img2img=is_img2img)
    scripts = registry.selectable(is_img2img) if registry is not None else []
    titles = [script.title() for script in scripts]
    dropdown = gr.Dropdown([NO_SCRIPT, *titles], value=NO_SCRIPT, label="Script",
                           elem_id=f"{prefix}_script")
    controls = [_script_group(script, runtime, prefix, is_img2img) for script in scripts]
    ui = ScriptsUI(dropdown=dropdown, controls=controls, alwayson=alwayson,
                   is_img2img=is_img2img)
    dropdown.change(lambda title: [gr.update(visible=c.title == title) for c in controls],
                    dropdown, [c.group for c in controls], queue=False)
    return ui


def slug_of(title: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in title.lower())


RENDERED_KINDS = ("bool", "int", "float", "str", "list")


def renders(spec: ArgSpec) -> bool:
    """`control_for` gives this argument a control that round-trips its value (not a
    structured one, such as a ControlNet unit, shown as text)."""
    if spec.choices:
        return True
    return spec.kind in RENDERED_KINDS and not (spec.kind == "str" and spec.default is None)


def alwayson_specs(script: Script) -> list[ArgSpec] | None:
    """The script's arguments in accordion order (a bool `enabled` first, A1111's
    checkbox-first accordions), or None when one of them has no control."""
    specs = arg_specs(script.Args)
    if not all(renders(spec) for spec in specs):
        return None
    first = [s for s in specs if s.name == "enabled" and s.kind == "bool"]
    return [*first, *[s for s in specs if s not in first]]


def build_alwayson(registry, prefix: str, *, is_img2img: bool) -> list[ScriptControls]:
    """One closed accordion per always-on script whose arguments all render."""
    built = []
    for script in registry.alwayson(is_img2img) if registry is not None else []:
        specs = alwayson_specs(script)
        if specs is None and has_own_ui(script):
            specs = arg_specs(script.Args)  # structured fields: the script's own controls
        if specs is None:
            log.debug("always-on script %r has arguments the UI cannot show: no accordion",
                      script.title())
            continue
        built.append(_alwayson_accordion(script, specs, prefix, is_img2img))
    return built


def _alwayson_accordion(script: Script, specs: list[ArgSpec], prefix: str,
                        is_img2img: bool) -> ScriptControls:
    title = script.title()
    slug = slug_of(title)
    with gr.Accordion(title, open=False, elem_id=f"{prefix}_alwayson_{slug}",
                      elem_classes=["alwayson-script"]) as accordion:
        controls = ScriptControls(title=title, group=accordion, script=script)
        # The script's own ui() builds its controls in `Args` order.
        own = _own_ui(script, is_img2img, len(specs))
        by_name = dict(zip([s.name for s in arg_specs(script.Args)], own)) if own else {}
        for spec in specs:
            widget = by_name.get(spec.name)
            if widget is None and not renders(spec):
                continue  # its own ui() failed: the field keeps its default
            if widget is None:
                widget = control_for(spec, f"{prefix}_alwayson_{slug}_{spec.name}")
            controls.names.append(spec.name)
            controls.kinds.append(spec.kind)
            controls.widgets.append(widget)
    return controls


def _script_group(script: Script, runtime, prefix: str, is_img2img: bool) -> ScriptControls:
    title = script.title()
    slug = slug_of(title)
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


def has_own_ui(script: Script) -> bool:
    """The script overrides `Script.ui`."""
    return getattr(type(script).ui, "__func__", type(script).ui) is not Script.ui


def _own_ui(script: Script, is_img2img: bool, count: int) -> list | None:
    """The script's own controls, if it builds them (one per field); else None."""
    if not has_own_ui(script):
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
