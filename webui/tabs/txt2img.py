"""The txt2img tab: the generation panel with hires fix, refiner and scripts.

The layout and the shared events are `webui.panel` / `webui.panel_wiring`; this file
composes them in A1111's order and turns the widget values into a `Txt2ImgParams`
(`webui.fields`), which it submits as `processing.txt2img` to the runtime's job queue
(the one the HTTP API uses). The bar polls the running job.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import gradio as gr

from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.submit import submit_generation
from webui import fields as F
from webui import panel as PN
from webui.family_defaults import build_demo_note
from webui.panel_results import (  # noqa: F401
    POLL_SECONDS,
    build_results,
    empty_results,
    gallery_images,
    infotext_html,
    poll_job,
    reuse_seed,
    selected_image,
)
from webui.panel_wiring import (  # noqa: F401
    paste_updates,
    paste_values,
    token_counter,
    updates_for,
    wire_generate,
    wire_panel,
    wire_run,
)
from webui.requests import checked_request
from webui.script_ui import build_scripts

PREFIX = "txt2img"
Txt2ImgTab = PN.GenerationPanel
native_size = PN.native_size


def build(runtime) -> PN.GenerationPanel:
    """Create the widgets (inside the current `gr.Tab`) and wire their events."""
    w: dict[str, Any] = {}
    tools: dict[str, gr.Button] = {}
    top = PN.build_prompt_row(runtime, PREFIX, w)
    with gr.Row(elem_id=f"{PREFIX}_main"):
        with gr.Column(scale=1, elem_id=f"{PREFIX}_settings"):
            PN.build_sampler(PREFIX, w)
            PN.build_size_and_batch(PREFIX, w, PN.native_size(runtime))
            PN.build_cfg(PREFIX, w, runtime)
            extra_rows = PN.build_seed_rows(PREFIX, w, tools)
            PN.build_tiling(PREFIX, w)
            toggles = [PN.build_hires(runtime, PREFIX, w), PN.build_refiner(runtime, PREFIX, w)]
            build_demo_note(runtime, PREFIX)  # the demo model's limits, beside hires fix
            scripts = build_scripts(runtime, PREFIX, is_img2img=False)
            PN.build_hidden_fields(PREFIX, w)
        with gr.Column(scale=1, elem_id=f"{PREFIX}_results"):
            results = build_results(PREFIX, upscale=True)
    panel = PN.GenerationPanel(prefix=PREFIX, names=F.FIELDS, fields=w, results_ui=results,
                               scripts=scripts, tools=tools, seed_extra_rows=extra_rows,
                               toggles=toggles, **top)
    wire_panel(runtime, panel,
               output_folder=lambda: runtime.settings.current.outdir_txt2img_samples)
    wire_generate(runtime, panel, lambda fields: generate(runtime, fields))
    wire_run(panel, results.upscale,
             lambda fields, gallery, state: upscale_selected(runtime, fields, gallery, state),
             extra_inputs=[results.gallery, results.results])
    return panel


def checked_params(runtime, values: dict[str, Any]) -> Txt2ImgParams:
    """Widget values -> a validated request; a bad field becomes a visible error naming it."""
    try:
        params = F.params_from_fields(values)
    except ValueError as error:
        from webui.panel_results import gr_error

        raise gr_error(error) from error
    return checked_request(runtime, params, is_img2img=False)


def upscale_selected(runtime, values: dict[str, Any], gallery, results: dict[str, Any]
                     ) -> Iterator[tuple]:
    """✨: the hires pass (the current hires settings) on the selected image, with its
    seed, instead of a first pass (`firstpass_image`, as A1111's button)."""
    picture, _ = selected_image(gallery, results)
    params = checked_params(runtime, {**values, "enable_hr": True})
    params = dataclasses.replace(params, firstpass_image=picture.convert("RGB"),
                                 width=picture.width, height=picture.height, batch_size=1, n_iter=1,
                                 seed=reuse_seed(results, "seeds"))
    try:
        params.validate()
    except ValueError as error:
        from webui.panel_results import gr_error

        raise gr_error(error) from error
    started = time.time()
    job = submit_generation(runtime, "txt2img", params)
    yield from poll_job(runtime, job, started=started,
                        folder=runtime.settings.current.outdir_txt2img_samples)


def generate(runtime, values: dict[str, Any]) -> Iterator[tuple]:
    """Submit a txt2img job; yield (gallery, infotext, progress, results) while it runs."""
    params = checked_params(runtime, values)
    started = time.time()
    job = submit_generation(runtime, "txt2img", params)
    yield from poll_job(runtime, job, started=started,
                        folder=runtime.settings.current.outdir_txt2img_samples)
