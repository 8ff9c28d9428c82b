"""The Extensions tab, the extensions' own UI tabs, and their page scripts and styles.

Installed: every extension with its state and errors; ticking/unticking and "Apply"
persists `disabled_extensions` (scripts and callbacks follow at once; new files and
install.py take a restart). Extension settings: the typed options extensions
declared, validated and saved together. Install from URL: a `git clone` into the user
extensions folder, refused with a message unless the server is local, or
`--enable-insecure-extension-access` and a login are given (`modules.extensions.install`,
which also refuses private-network URLs). An extension's `ui.py` (its
`ui_tabs(runtime) -> [(title, build)]`) and `ui_tabs` callbacks are only run here.
"""

from __future__ import annotations

import html
import logging
import re
from dataclasses import dataclass

import gradio as gr

from modules.extensions.install import extension_access_denial, install_from_url
from modules.scripts import loader

log = logging.getLogger(__name__)


def installed_rows(runtime) -> list[list]:
    return [[item["name"], item["enabled"], "built-in" if item["builtin"] else "user",
             item["commit_hash"] or "", "; ".join(item["errors"])]
            for item in runtime.extensions.describe()]


def apply_enabled(runtime, enabled: list[str]) -> tuple[list[list], str]:
    """Persist which extensions are enabled; return the refreshed table and a status."""
    for ext in runtime.extensions.extensions:
        if (ext.name in enabled) != ext.enabled:
            runtime.extensions.set_enabled(ext.name, ext.name in enabled)
    return installed_rows(runtime), "Saved. New scripts and install.py run on the next start."


def apply_options(runtime, keys: list[str], *values) -> str:
    try:
        runtime.extensions.options.update(dict(zip(keys, values)))
    except ValueError as error:
        return f"Not saved: {error}"
    return "Extension settings saved."


def install(runtime, url: str, branch: str, dirname: str) -> str:
    """The "Install" button: a status line (the refusal message when not allowed)."""
    denial = extension_access_denial(runtime.args)
    if denial:
        return denial
    try:
        target = install_from_url(runtime.args, runtime.paths.extensions_dirs[-1], url,
                                  dirname=dirname or None, branch=branch or None)
    except Exception as error:
        return f"Install failed: {error}"
    return f"Installed into {target}. Restart Easel to load it."


@dataclass
class ExtensionsTab:
    table: gr.Dataframe
    enabled: gr.CheckboxGroup
    install_status: gr.Markdown


def _option_widget(option, value):
    if isinstance(option.default, bool):
        return gr.Checkbox(value=value, label=option.label)
    if option.choices:
        return gr.Dropdown(choices=list(option.choices), value=value, label=option.label)
    if isinstance(option.default, (int, float)):
        return gr.Number(value=value, label=option.label, minimum=option.minimum,
                         maximum=option.maximum, precision=0 if isinstance(option.default, int)
                         else None)
    return gr.Textbox(value=value, label=option.label)


def _build_options(runtime) -> None:
    options = runtime.extensions.options.declared()
    if not options:
        gr.Markdown("No extension declares settings.")
        return
    widgets = []
    for section in sorted({o.section for o in options}):
        with gr.Accordion(section, open=True):
            for option in [o for o in options if o.section == section]:
                widgets.append(_option_widget(option, runtime.extensions.options.get(option.key)))
    keys = [o.key for section in sorted({o.section for o in options})
            for o in options if o.section == section]
    status = gr.Markdown()
    gr.Button("Apply extension settings").click(
        lambda *values: apply_options(runtime, keys, *values), widgets, status, queue=False)


def build(runtime) -> ExtensionsTab:
    names = [ext.name for ext in runtime.extensions.extensions]
    with gr.Tabs():
        with gr.Tab("Installed", elem_id="extensions_installed"):
            table = gr.Dataframe(installed_rows(runtime), interactive=False,
                                 headers=["Extension", "Enabled", "Kind", "Commit", "Errors"])
            enabled = gr.CheckboxGroup(names, label="Enabled extensions", value=[
                ext.name for ext in runtime.extensions.extensions if ext.enabled])
            status = gr.Markdown()
            gr.Button("Apply", variant="primary").click(
                lambda chosen: apply_enabled(runtime, chosen), enabled, [table, status],
                queue=False)
        with gr.Tab("Settings", elem_id="extensions_settings"):
            _build_options(runtime)
        with gr.Tab("Install from URL", elem_id="extensions_install"):
            denial = extension_access_denial(runtime.args)
            allowed = denial is None
            url = gr.Textbox(label="URL for extension's git repository", interactive=allowed)
            branch = gr.Textbox(label="Specific branch name (leave empty for default)",
                                interactive=allowed)
            dirname = gr.Textbox(label="Local directory name (leave empty for auto)",
                                 interactive=allowed)
            install_status = gr.Markdown(denial or "")
            gr.Button("Install", interactive=allowed).click(
                lambda u, b, d: install(runtime, u, b, d), [url, branch, dirname],
                install_status)
    return ExtensionsTab(table=table, enabled=enabled, install_status=install_status)


def extension_tabs(runtime) -> list[tuple[str, object]]:
    """(title, build) from each enabled extension's ui.py and the ui_tabs callbacks."""
    found = []
    for ext, path in runtime.extensions.ui_modules():
        try:
            module = loader.import_file(path, name=loader.module_name(ext.name, path),
                                        folder=ext.path)
            found += list(module.ui_tabs(runtime))
        except Exception as error:  # a broken UI part never takes the page down
            message = f"{ext.name}/ui.py: {type(error).__name__}: {error}"
            log.error("Extension UI failed: %s", message)
            ext.errors.append(message)
    for tabs in runtime.extensions.call("ui_tabs", runtime):
        found += list(tabs or [])
    return found


def build_extension_tabs(runtime) -> None:
    """One tab per (title, build); must be called inside the page's gr.Tabs."""
    for title, build_tab in extension_tabs(runtime):
        with gr.Tab(title, elem_id="tab_ext_" + re.sub(r"\W", "_", title.lower())):
            try:
                build_tab()
            except Exception as error:
                log.error("Extension tab %s failed: %s", title, error)
                gr.Markdown(f"This tab failed to build: {html.escape(str(error))}")


def page_head(runtime) -> str:
    """`<script>` tags for every enabled extension's javascript/*.js, in load order."""
    parts = []
    for path in runtime.extensions.javascript_files():
        text = path.read_text(encoding="utf-8").replace("</script", "<\\/script")
        kind = "module" if path.suffix == ".mjs" else "text/javascript"
        parts.append(f'<script type="{kind}" data-extension-file="{html.escape(path.name)}">'
                     f"{text}</script>")
    return "\n".join(parts)


def page_css(runtime) -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in runtime.extensions.css_files())
