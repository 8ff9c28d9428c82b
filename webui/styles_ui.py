"""Prompt styles in a generation tab: pick, apply to the prompt, edit, save, delete.

Styles live in `styles.csv` (`modules.styles`, A1111's format). Picked styles are
merged into the prompts when the job is built (and sent in `styles`); 📋 merges them
into the prompt boxes at once instead. 🖌️ opens the editor: choose a style (or type
a new name), change its text, copy the current prompts into it, save or delete.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.styles import (
    PromptStyle,
    StyleError,
    apply_styles,
    delete_style,
    load_styles,
    save_style,
)
from webui.widgets import tool_button

APPLY_SYMBOL, EDIT_SYMBOL = "\U0001f4cb", "\U0001f58c\ufe0f"  # 📋 🖌️


@dataclass
class StylesUI:
    dropdown: gr.Dropdown
    apply: gr.Button
    edit: gr.Button
    editor: gr.Group
    name: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    copy: gr.Button
    save: gr.Button
    delete: gr.Button
    shown: gr.State  # whether the editor is open (🖌️ toggles it)


def style_names(runtime) -> list[str]:
    return [style.name for style in load_styles(runtime.paths.styles_file)]


def build_styles(runtime, prefix: str, w: dict[str, Any]) -> StylesUI:
    names = style_names(runtime)
    with gr.Row(elem_id=f"{prefix}_styles_row", equal_height=True):
        w["styles"] = gr.Dropdown(names, value=[], multiselect=True, label="Styles",
                                  elem_id=f"{prefix}_styles", scale=4, container=False)
        apply = tool_button(APPLY_SYMBOL, elem_id=f"{prefix}_style_apply")
        edit = tool_button(EDIT_SYMBOL, elem_id=f"{prefix}_styles_edit_button")
    with gr.Group(visible=False, elem_id=f"{prefix}_styles_editor") as editor:
        name = gr.Dropdown(names, value=None, label="Style", allow_custom_value=True,
                           elem_id=f"{prefix}_edit_style_name")
        prompt = gr.Textbox(label="Prompt", lines=2, elem_id=f"{prefix}_edit_style_prompt")
        negative = gr.Textbox(label="Negative prompt", lines=2,
                              elem_id=f"{prefix}_edit_style_neg_prompt")
        with gr.Row():
            copy = gr.Button("Copy current prompt", size="sm", elem_id=f"{prefix}_style_copy")
            save = gr.Button("Save", size="sm", variant="primary", elem_id=f"{prefix}_style_save")
            delete = gr.Button("Delete", size="sm", variant="stop",
                               elem_id=f"{prefix}_style_delete")
    return StylesUI(dropdown=w["styles"], apply=apply, edit=edit, editor=editor, name=name,
                    prompt=prompt, negative_prompt=negative, copy=copy, save=save,
                    delete=delete, shown=gr.State(False))


# ---------------------------------------------------------------- handlers


def apply_to_prompts(runtime, prompt: str, negative: str, names: list[str]
                     ) -> tuple[str, str, list[str]]:
    """📋: the picked styles merged into the prompts; the pick is then cleared."""
    try:
        merged = apply_styles(prompt or "", negative or "", names or [],
                              load_styles(runtime.paths.styles_file))
    except StyleError as error:
        raise gr.Error(f"Styles: {error}") from error
    return (*merged, [])


def style_text(runtime, name: str | None) -> tuple[str, str]:
    """The text of the style chosen in the editor ("" for a new name)."""
    for style in load_styles(runtime.paths.styles_file):
        if style.name == name:
            return style.prompt, style.negative_prompt
    return gr.skip(), gr.skip()


def save_edited(runtime, name: str | None, prompt: str, negative: str, picked: list[str]):
    """Save the editor's style; both dropdowns get the new list of names."""
    if not (name or "").strip():
        raise gr.Error("Style: type a name for the style first")
    try:
        styles = save_style(runtime.paths.styles_file, PromptStyle(
            name=name.strip(), prompt=prompt or "", negative_prompt=negative or ""))
    except (OSError, ValueError) as error:
        raise gr.Error(f"Style: cannot save: {error}") from error
    return _choices(styles, picked, name.strip())


def delete_edited(runtime, name: str | None, picked: list[str]):
    try:
        styles = delete_style(runtime.paths.styles_file, name or "")
    except (OSError, StyleError) as error:
        raise gr.Error(f"Style: {error}") from error
    return _choices(styles, [p for p in picked or [] if p != name], None)


def _choices(styles: list[PromptStyle], picked: list[str], current: str | None):
    names = [style.name for style in styles]
    return (gr.update(choices=names, value=[p for p in picked or [] if p in names]),
            gr.update(choices=names, value=current))


def wire_styles(runtime, ui: StylesUI, prompt, negative) -> None:
    ui.apply.click(lambda p, n, names: apply_to_prompts(runtime, p, n, names),
                   [prompt, negative, ui.dropdown], [prompt, negative, ui.dropdown], queue=False)
    ui.edit.click(lambda shown: (gr.update(visible=not shown), not shown), ui.shown,
                  [ui.editor, ui.shown], queue=False)
    ui.name.change(lambda name: style_text(runtime, name), ui.name,
                   [ui.prompt, ui.negative_prompt], queue=False)
    ui.copy.click(lambda p, n: (p, n), [prompt, negative], [ui.prompt, ui.negative_prompt],
                  queue=False)
    ui.save.click(lambda *a: save_edited(runtime, *a),
                  [ui.name, ui.prompt, ui.negative_prompt, ui.dropdown],
                  [ui.dropdown, ui.name], queue=False)
    ui.delete.click(lambda name, picked: delete_edited(runtime, name, picked),
                    [ui.name, ui.dropdown], [ui.dropdown, ui.name], queue=False)
