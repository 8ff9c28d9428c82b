"""The web application: Gradio Blocks mounted on a FastAPI app, with the HTTP API beside it.

`create_app(runtime)` builds the page (top bar, txt2img, PNG Info, Settings), puts
the `/sdapi/v1/*` routes on the same FastAPI app when `--api` is given (before the
UI's catch-all mount at "/"), and protects the whole app (UI, API, `/internal/*`,
extension routes) when any login is configured (`webui.login`, `modules.api.auth`).
Nothing here waits for the model: the page is served at once, and handlers that need
the model wait on `runtime.ready` in a worker thread.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
from fastapi import FastAPI

from modules.api.auth import ui_users
from modules.errors import without_paths
from webui import widgets
from webui.family_defaults import wire_family_defaults
from webui.panel import shows_distilled_cfg
from webui.send_to import SendTarget, wire_send
from webui.tabs import extensions as extensions_tab
from webui.tabs import extras as extras_tab
from webui.tabs import img2img, png_info, txt2img
from webui.tabs import merger as merger_tab
from webui.tabs import settings as settings_tab
from webui.tabs import train as train_tab

log = logging.getLogger(__name__)

STYLE_FILE = Path(__file__).with_name("style.css")
SCRIPT_FILE = Path(__file__).with_name("script.js")
MODEL_POLL_S = 1.0  # how often a page opened during the first model load checks it


def create_app(runtime) -> FastAPI:
    """The FastAPI app serving the UI at "/" (and the API when `--api`)."""
    app = FastAPI(title="Easel")
    if getattr(runtime.args, "api", False):
        from modules.api.app import register_api

        register_api(app, runtime)
    else:  # extension routes exist without --api too (still behind --api-auth)
        from modules.api.extension_routes import register_extension_routes

        register_extension_routes(app, runtime)
    blocks = build_ui(runtime)
    theme = getattr(runtime.args, "theme", None) or ""
    gr.mount_gradio_app(
        app, blocks, path="/", auth=ui_auth(runtime.args), auth_message="Easel",
        css=STYLE_FILE.read_text(encoding="utf-8") + "\n" + extensions_tab.page_css(runtime),
        head=extensions_tab.page_head(runtime), theme=gr.themes.Default(),
        js=SCRIPT_FILE.read_text(encoding="utf-8").replace("__EASEL_THEME__", theme),
        root_path=getattr(runtime.args, "subpath", None) or None,
        ssr_mode=False, show_error=True, footer_links=["gradio"],
    )
    from webui.login import protect_app

    protect_app(app, runtime.args)  # after the mount: every route, the UI's included
    return app


def build_ui(runtime) -> gr.Blocks:
    """The Blocks: top bar and tabs, wired to `runtime`."""
    with gr.Blocks(title="Easel", analytics_enabled=False) as blocks:
        top = widgets.build_top_bar(runtime)
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                t2i = txt2img.build(runtime)
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                i2i = img2img.build(runtime)
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = extras_tab.build(runtime)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                info = png_info.build()
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                merger_tab.build(runtime, top.checkpoint)
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                train_tab.build(runtime)
            with gr.Tab("Settings", id="settings", elem_id="tab_settings"):
                settings = settings_tab.build(runtime)
            with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                extensions_tab.build(runtime)
            extensions_tab.build_extension_tabs(runtime)
        _wire_top_bar(runtime, top, settings)
        _wire_send_to_txt2img(runtime, info, t2i, tabs)
        targets = send_targets(runtime, i2i, extras=extras)
        png_info.wire_send(info, targets, tabs)
        for panel in (t2i, i2i.panel):
            wire_send(panel, targets, tabs)
            _wire_checkpoint_cards(runtime, top, panel)
        _wire_page_load(runtime, blocks, top, [t2i, i2i.panel], settings)
        _wire_distilled_cfg(runtime, blocks, top, [t2i, i2i.panel])
        wire_family_defaults(runtime, blocks, top.checkpoint, [t2i, i2i.panel])
    blocks.queue(max_size=64, default_concurrency_limit=1)
    return blocks


def _wire_top_bar(runtime, top: widgets.TopBar, settings: settings_tab.SettingsTab) -> None:
    modules = top.quick[widgets.MODULES]
    top.refresh.click(lambda chosen: [widgets.refresh_checkpoints(runtime),
                                      gr.update(choices=widgets.vae_choices(runtime)),
                                      gr.update(choices=widgets.module_choices(runtime, chosen))],
                      modules, [top.checkpoint, top.quick["sd_vae"], modules], queue=False)
    def select(title: str):
        update = widgets.select_checkpoint(runtime, title)
        return update, runtime.settings.current.sd_model_checkpoint

    top.checkpoint.input(select, top.checkpoint,
                         [top.checkpoint, settings.widgets["sd_model_checkpoint"]],
                         concurrency_limit=1)
    for name, widget in top.quick.items():
        widget.input(lambda value, n=name: [widgets.apply_quick_setting(runtime, n, value)] * 2,
                     widget, [widget, settings.widgets[name]], trigger_mode="always_last",
                     concurrency_limit=None, show_progress="hidden")


def _wire_send_to_txt2img(runtime, info: png_info.PngInfoTab, t2i: txt2img.Txt2ImgTab,
                          tabs: gr.Tabs) -> None:
    def send(text: str):
        # The fields and the always-on scripts' widgets, as the ↙️ button sets them.
        updates = txt2img.paste_updates(runtime, t2i, text, txt2img.empty_results()) \
            if text else [gr.skip()] * len(t2i.paste_widgets())
        return [*updates, gr.Tabs(selected="txt2img")]

    info.send_to_txt2img.click(send, info.parameters, [*t2i.paste_widgets(), tabs], queue=False)


def send_targets(runtime, i2i: img2img.Img2ImgTab, *, extras=None) -> dict[str, SendTarget]:
    """Where the galleries' "Send to" buttons put a picture. The one place to add a tab:
    `extras` is the Extras tab's object (anything with an `image` input component)."""
    targets = {"img2img": img2img.send_target(runtime, i2i, "img2img"),
               "inpaint": img2img.send_target(runtime, i2i, "inpaint")}
    if getattr(extras, "image", None) is not None:
        targets["extras"] = SendTarget(tab="extras", image=extras.image)
    return targets


def _wire_checkpoint_cards(runtime, top: widgets.TopBar, panel) -> None:
    """A checkpoint card's click (script.js fills a hidden box) switches the checkpoint."""
    pick = panel.networks.checkpoint_pick

    def select(title: str):
        if not title:
            return gr.skip(), gr.skip()
        return widgets.select_checkpoint(runtime, title), ""

    pick.change(select, pick, [top.checkpoint, pick], concurrency_limit=1)


def _wire_distilled_cfg(runtime, blocks: gr.Blocks, top: widgets.TopBar, panels: list) -> None:
    """"Distilled CFG Scale" (and its hires twin) shows while the loaded model is Flux.1 dev:
    on page load and whenever the checkpoint changes."""
    sliders = [panel.fields[name] for panel in panels
               for name in ("distilled_cfg_scale", "hr_distilled_cfg") if name in panel.fields]

    def show() -> list:
        return [gr.update(visible=shows_distilled_cfg(runtime))] * len(sliders)

    blocks.load(show, None, sliders, queue=False)
    top.checkpoint.change(show, None, sliders, queue=False, show_progress="hidden")


def _wire_page_load(runtime, blocks: gr.Blocks, top: widgets.TopBar, panels: list,
                    settings: settings_tab.SettingsTab) -> None:
    """On page load, the current settings; until the first model load ends, a timer that
    then fills in the checkpoint and the model's native size in every panel (txt2img,
    img2img), never waiting on the load and without a reload of the page."""
    quick = list(top.quick.values())
    blocks.load(lambda: settings_tab.current_values(runtime) + widgets.quick_values(runtime),
                None, [*settings.widget_list(), *quick], queue=False)
    built_size = txt2img.native_size(runtime)
    timer = gr.Timer(MODEL_POLL_S, active=not runtime.ready.is_set())
    sides = [panel.fields[name] for panel in panels for name in ("width", "height")]
    timer.tick(lambda *values: model_defaults(runtime, *values, built_size=built_size),
               sides, [top.checkpoint, *sides, timer], queue=False, show_progress="hidden")


def model_defaults(runtime, *sides: int, built_size: int) -> list:
    """Once the first load ended: checkpoint choices/value, and the model's native size
    for each side (width, height, ...) the user has not changed from the page's default;
    why the start-up model is not the first choice, as warnings; then stop polling."""
    if not runtime.ready.is_set():
        return [gr.skip()] * (len(sides) + 2)
    for warning in runtime.models.startup_warnings:
        gr.Warning(without_paths(warning))
    size = txt2img.native_size(runtime)
    return [widgets.refresh_checkpoints(runtime),
            *(size if side == built_size else gr.skip() for side in sides),
            gr.Timer(active=False)]


def ui_auth(args) -> list[tuple[str, str]] | None:
    """Logins from `--gradio-auth "u:p,u2:p2"` and `--gradio-auth-path` (one or more per line)."""
    return sorted(ui_users(args).items()) or None
