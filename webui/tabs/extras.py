"""The Extras tab: upscale a single image, a batch of uploads, or a folder of images.

A1111's layout: sub-tabs Single image / Batch Process / Batch from Directory, an
"Upscale" section with "Scale by" / "Scale to" sub-tabs, Upscaler 1, Upscaler 2 and its
visibility, then the output gallery and the info text. The handler only turns the
widgets into an `ExtrasJob` and calls `modules.upscaling.extras_jobs.run_extras_job`.
`ExtrasTab.image` is the single-image input, the target of "Send to extras".
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.pipeline.params import ParamsError
from modules.upscaling.extras import ExtrasParams
from modules.upscaling.extras_jobs import ExtrasJob, run_extras_job
from modules.upscaling.registry import UpscalerError, upscalers_of
from webui.panel_results import error_html, error_message
from webui.widgets import REFRESH_SYMBOL, tool_button

MODES = ("single", "batch", "directory")
LABELS = {
    "image": "Source", "image_folder": "Batch Process", "input_dir": "Input directory",
    "output_dir": "Output directory", "mode": "Extras mode",
    "upscaling_resize": "Resize", "upscaling_resize_w": "Width", "upscaling_resize_h": "Height",
    "upscaler_1": "Upscaler 1", "upscaler_2": "Upscaler 2",
    "extras_upscaler_2_visibility": "Upscaler 2 visibility",
    "gfpgan_visibility": "GFPGAN Visibility", "codeformer_visibility": "CodeFormer Visibility",
    "codeformer_weight": "CodeFormer Weight (0 = maximum effect, 1 = minimum effect)",
}


@dataclass
class ExtrasTab:
    image: gr.Image  # "Send to extras" puts the picture here
    fields: dict[str, Any]
    mode: gr.State
    resize_mode: gr.State
    generate: gr.Button
    gallery: gr.Gallery
    info: gr.HTML


def build(runtime) -> ExtrasTab:
    names = upscalers_of(runtime).names()
    f: dict[str, Any] = {}
    mode, resize_mode = gr.State("single"), gr.State(0)
    with gr.Row(elem_id="extras_page"):
        with gr.Column(variant="compact"):
            image = _inputs(f, mode)
            generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            _upscale_section(f, resize_mode, names)
            _face_section(f)
        with gr.Column():
            gallery = gr.Gallery(label="Result", format="png", columns=2, height=512,
                                 object_fit="contain", elem_id="extras_gallery",
                                 interactive=False, buttons=["download", "fullscreen"])
            info = gr.HTML(elem_id="extras_info")
    tab = ExtrasTab(image=image, fields=f, mode=mode, resize_mode=resize_mode,
                    generate=generate, gallery=gallery, info=info)
    _wire(runtime, tab)
    return tab


def _inputs(f: dict[str, Any], mode: gr.State) -> gr.Image:
    with gr.Tabs(elem_id="mode_extras") as modes:
        with gr.Tab("Single Image", id="extras_single_tab", elem_id="extras_single_tab") as single:
            # PNG: a sent picture's `parameters` chunk survives the trip to the browser and
            # back (Gradio's default WebP drops it), so the result keeps them.
            image = gr.Image(label="Source", type="pil", sources=["upload", "clipboard"],
                             elem_id="extras_image", height=360, format="png")
        with gr.Tab("Batch Process", id="extras_batch_process_tab",
                    elem_id="extras_batch_process_tab") as batch:
            f["files"] = gr.File(label="Batch Process", file_count="multiple", type="filepath",
                                 file_types=["image"], elem_id="extras_image_batch")
        with gr.Tab("Batch from Directory", id="extras_batch_directory_tab",
                    elem_id="extras_batch_directory_tab") as directory:
            f["input_dir"] = gr.Textbox(label="Input directory", elem_id="extras_batch_input_dir",
                                        placeholder="A directory on the same machine where "
                                                    "the server is running.")
            f["output_dir"] = gr.Textbox(label="Output directory",
                                         elem_id="extras_batch_output_dir",
                                         placeholder="Leave blank to save images to the "
                                                     "default path.")
            f["show_results"] = gr.Checkbox(label="Show result images", value=True,
                                            elem_id="extras_show_extras_results")
    for tab, name in zip((single, batch, directory), MODES):
        tab.select(lambda name=name: name, None, mode, queue=False)
    # A picture arriving ("Send to extras", an upload) shows and selects Single Image.
    image.change(lambda picture: ["single", gr.Tabs(selected="extras_single_tab")]
                 if picture is not None else [gr.skip(), gr.skip()], image, [mode, modes],
                 queue=False)
    return image


def _upscale_section(f: dict[str, Any], resize_mode: gr.State, names: list[str]) -> None:
    with gr.Group(elem_id="extras_upscale"):
        with gr.Tabs(elem_id="extras_resize_mode"):
            with gr.Tab("Scale by", id="extras_scale_by_tab", elem_id="extras_scale_by_tab") as by:
                f["upscaling_resize"] = gr.Slider(minimum=1.0, maximum=8.0, step=0.05, value=4,
                                                  label="Resize", elem_id="extras_upscaling_resize")
            with gr.Tab("Scale to", id="extras_scale_to_tab", elem_id="extras_scale_to_tab") as to:
                with gr.Row():
                    f["upscaling_resize_w"] = gr.Slider(64, 8192, step=8, value=512, label="Width",
                                                        elem_id="extras_upscaling_resize_w")
                    f["upscaling_resize_h"] = gr.Slider(64, 8192, step=8, value=512, label="Height",
                                                        elem_id="extras_upscaling_resize_h")
                    f["upscaling_crop"] = gr.Checkbox(label="Crop to fit", value=True,
                                                      elem_id="extras_upscaling_crop")
        by.select(lambda: 0, None, resize_mode, queue=False)
        to.select(lambda: 1, None, resize_mode, queue=False)
        with gr.Row():
            f["upscaler_1"] = gr.Dropdown(label="Upscaler 1", choices=names, value="None",
                                          elem_id="extras_upscaler_1")
            f["upscaler_2"] = gr.Dropdown(label="Upscaler 2", choices=names, value="None",
                                          elem_id="extras_upscaler_2")
            f["refresh"] = tool_button(REFRESH_SYMBOL, elem_id="extras_refresh_upscalers")
        f["extras_upscaler_2_visibility"] = gr.Slider(
            0.0, 1.0, step=0.001, value=0.0, label="Upscaler 2 visibility",
            elem_id="extras_upscaler_2_visibility")


def _face_section(f: dict[str, Any]) -> None:
    """A1111's GFPGAN and CodeFormer postprocessing sliders (restorers from
    models/GFPGAN/ and models/Codeformer/; docs/face_restoration.md)."""
    with gr.Group(elem_id="extras_face_restoration"):
        for name in ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight"):
            f[name] = gr.Slider(0.0, 1.0, step=0.001, value=0.0, label=LABELS[name],
                                elem_id=f"extras_{name}")


VALUE_FIELDS = ("files", "input_dir", "output_dir", "show_results", "upscaling_resize",
                "upscaling_resize_w", "upscaling_resize_h", "upscaling_crop", "upscaler_1",
                "upscaler_2", "extras_upscaler_2_visibility", "gfpgan_visibility",
                "codeformer_visibility", "codeformer_weight")


def _wire(runtime, tab: ExtrasTab) -> None:
    inputs = [tab.mode, tab.resize_mode, tab.image, *(tab.fields[n] for n in VALUE_FIELDS)]

    def run(mode, resize_mode, image, *values):
        try:
            return process(runtime, {"mode": mode, "resize_mode": resize_mode, "image": image,
                                     **dict(zip(VALUE_FIELDS, values))})
        except gr.Error as error:  # stays where the result would be, until the next run
            return gr.skip(), error_html(error_message(error))

    tab.generate.click(run, inputs, [tab.gallery, tab.info], concurrency_limit=1)
    dropdowns = [tab.fields["upscaler_1"], tab.fields["upscaler_2"]]
    tab.fields["refresh"].click(lambda: [gr.Dropdown(choices=upscalers_of(runtime).names())] * 2,
                                None, dropdowns, queue=False)


def job_from_values(values: dict[str, Any]) -> ExtrasJob:
    """The widgets' values as an `ExtrasJob` (sliders give floats; sizes are ints)."""
    params = ExtrasParams(
        resize_mode=int(values["resize_mode"]),
        upscaling_resize=float(values["upscaling_resize"]),
        upscaling_resize_w=int(values["upscaling_resize_w"]),
        upscaling_resize_h=int(values["upscaling_resize_h"]),
        upscaling_crop=bool(values["upscaling_crop"]), upscaler_1=values["upscaler_1"] or "None",
        upscaler_2=values["upscaler_2"] or "None",
        extras_upscaler_2_visibility=float(values["extras_upscaler_2_visibility"]),
        gfpgan_visibility=float(values.get("gfpgan_visibility") or 0),
        codeformer_visibility=float(values.get("codeformer_visibility") or 0),
        codeformer_weight=float(values.get("codeformer_weight") or 0))
    files = values.get("files") or []
    return ExtrasJob(mode=values["mode"], image=values.get("image"),
                     files=[getattr(f, "name", f) for f in files],
                     input_dir=values.get("input_dir") or "",
                     output_dir=values.get("output_dir") or "",
                     show_results=bool(values.get("show_results", True)), params=params)


def process(runtime, values: dict[str, Any]) -> tuple[list, str]:
    """Run the job; a `ParamsError` becomes a visible error naming the widget."""
    try:
        outcome = run_extras_job(runtime, job_from_values(values))
    except ParamsError as error:
        raise gr.Error(f"{LABELS.get(error.field, error.field)}: {error.reason}") from error
    except UpscalerError as error:  # a restorer or upscaler file missing or unusable
        raise gr.Error(str(error)) from error
    text = "<p>" + html.escape(", ".join(f"{k}: {v}" for k, v in outcome.info.items())) + "</p>"
    if outcome.warnings:
        text += "".join(f"<p class='extras-warning'>{html.escape(w)}</p>"
                        for w in outcome.warnings)
    if not outcome.images:
        text += f"<p>Saved {len(outcome.saved_paths)} images.</p>"
    return outcome.images, text
