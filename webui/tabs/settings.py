"""The Settings tab, generated from the `Settings` dataclass's field metadata.

Each field's label, section, choices and range pick its widget (`widgets.setting_widget`);
sections become groups in declaration order. The search box hides the settings whose
label (or name) does not contain the query. "Apply settings" sends only the changed
values to `runtime.settings.update`, which validates them all and saves `config.json`
atomically; a refused value is shown naming the setting, and nothing is saved.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.settings import Settings, SettingsError
from webui.widgets import setting_widget


@dataclass
class SettingsTab:
    widgets: dict[str, Any]  # setting name -> widget, in declaration order
    sections: dict[str, gr.Group]
    search: gr.Textbox
    apply: gr.Button
    result: gr.HTML

    def widget_list(self) -> list[Any]:
        """The widgets in `Settings.names()` order, the order every handler uses."""
        return [self.widgets[name] for name in Settings.names()]


def sections_in_order() -> dict[str, list[str]]:
    """Section name -> setting names, both in declaration order."""
    grouped: dict[str, list[str]] = {}
    for name in Settings.names():
        grouped.setdefault(Settings.describe(name)["section"], []).append(name)
    return grouped


def build(runtime) -> SettingsTab:
    current = runtime.settings.current
    with gr.Row(elem_id="settings_top", equal_height=True):
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit",
                          scale=1)
        search = gr.Textbox(placeholder="Search...", show_label=False, scale=3,
                            elem_id="settings_search")
    result = gr.HTML(elem_id="settings_result")
    widgets: dict[str, Any] = {}
    sections: dict[str, gr.Group] = {}
    for section, names in sections_in_order().items():
        with gr.Group(elem_classes=["settings-section"]) as group:
            gr.Markdown(f"### {section}", elem_classes=["settings-section-title"])
            for name in names:
                widgets[name] = setting_widget(name, getattr(current, name))
        sections[section] = group
    tab = SettingsTab(widgets=widgets, sections=sections, search=search, apply=apply,
                      result=result)
    _wire(runtime, tab)
    return tab


def _wire(runtime, tab: SettingsTab) -> None:
    names = Settings.names()
    tab.search.change(search_updates, tab.search,
                      [*tab.widget_list(), *tab.sections.values()], queue=False,
                      trigger_mode="always_last", show_progress="hidden")
    tab.apply.click(lambda *values: apply_settings(runtime, dict(zip(names, values))),
                    tab.widget_list(), [tab.result, *tab.widget_list()],
                    concurrency_limit=None)


def matches(name: str, query: str) -> bool:
    query = query.strip().lower()
    label = Settings.describe(name)["label"].lower()
    return not query or query in label or query in name.lower()


def search_updates(query: str) -> list:
    """Visibility for every setting widget, then for every section."""
    grouped = sections_in_order()
    shown = {name: matches(name, query or "") for name in Settings.names()}
    updates = [gr.update(visible=shown[name]) for name in Settings.names()]
    updates += [gr.update(visible=any(shown[n] for n in names)) for names in grouped.values()]
    return updates


def changed_values(current: Settings, values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items()
            if not _same(getattr(current, name), value)}


def _same(saved: Any, shown: Any) -> bool:
    """A list setting is saved as a tuple and shown as a list."""
    if isinstance(saved, tuple) and isinstance(shown, list):
        shown = tuple(shown)
    return saved == shown


def apply_settings(runtime, values: dict[str, Any]) -> list:
    """Save what changed; return the result message and the saved values for the widgets."""
    changes = changed_values(runtime.settings.current, values)
    if not changes:
        return ["<p>Nothing to apply.</p>", *current_values(runtime)]
    try:
        runtime.settings.update(changes, origin="ui")
    except (SettingsError, PermissionError) as error:
        raise gr.Error(describe_error(str(error))) from error
    labels = ", ".join(Settings.describe(name)["label"] for name in changes)
    message = f"<p>{len(changes)} settings changed: {html.escape(labels)}.</p>"
    return [message, *current_values(runtime)]


def describe_error(message: str) -> str:
    """Prefix a "name: reason" error with the setting's label, as the user sees it."""
    name, _, _ = message.partition(":")
    if name in Settings.__dataclass_fields__:
        return f"{Settings.describe(name)['label']} ({message})"
    return message


def current_values(runtime) -> list:
    current = runtime.settings.current
    values = [getattr(current, name) for name in Settings.names()]
    return [list(value) if isinstance(value, tuple) else value for value in values]
