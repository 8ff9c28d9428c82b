"""The img2img tab: img2img / Sketch / Inpaint / Inpaint sketch / Inpaint upload / Batch.

The generation panel (`webui.panel`) around A1111's img2img inputs: one sub-tab per
mode (Gradio 6's `ImageEditor` for drawn masks and sketches), resize mode, "Resize
to" / "Resize by", denoising strength and the inpainting options, shown for the
inpaint modes. The handler turns the widgets into an `Img2ImgParams`
(`webui.img2img_fields`) and submits img2img (`modules.pipeline.submit`) to the job queue; the
Batch sub-tab runs `modules.pipeline.img2img_batch.img2img_batch` over folders.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from modules.errors import without_paths
from modules.models.errors import ModelLoadError
from modules.pipeline.img2img_batch import PNG_INFO_PROPS, img2img_batch
from modules.pipeline.params import MASKED_CONTENT, RESIZE_MODES, GenerationResult, ParamsError
from modules.pipeline.submit import submit_generation
from modules.upscaling.interrogate.service import InterrogatorMissing, interrogate
from webui import img2img_fields as I
from webui import panel as PN
from webui.panel_results import build_results, gr_error, poll_job
from webui.panel_wiring import wire_generate, wire_panel
from webui.requests import checked_request
from webui.script_ui import build_scripts

PREFIX = "img2img"
EDITOR_HEIGHT = 480
SKETCH_COLORS = ["#ffffff", "#000000", "#ff0000", "#00a000", "#0000ff", "#ffff00"]


@dataclass
class Img2ImgTab:
    panel: PN.GenerationPanel
    mode: gr.State  # the selected sub-tab (img2img_fields.MODES)
    mode_tabs: gr.Tabs
    pictures: dict[str, Any]  # image, sketch, inpaint, inpaint_sketch, upload, upload_mask
    batch: dict[str, Any]  # input_dir, output_dir, mask_dir, png_info, png_info_props, ...
    inpaint_options: gr.Group

    def picture_inputs(self) -> list[Any]:
        return [self.pictures[name] for name in PICTURES]


PICTURES = ("image", "sketch", "inpaint", "inpaint_sketch", "upload", "upload_mask")
BATCH = ("input_dir", "output_dir", "mask_dir", "png_info", "png_info_props", "png_info_dir")


def build(runtime) -> Img2ImgTab:
    """Create the widgets (inside the current `gr.Tab`) and wire their events."""
    w: dict[str, Any] = {}
    tools: dict[str, gr.Button] = {}
    top = PN.build_prompt_row(runtime, PREFIX, w)
    interrogators = _interrogate_row()
    mode = gr.State("img2img")
    with gr.Row(elem_id=f"{PREFIX}_main"):
        with gr.Column(scale=1, elem_id=f"{PREFIX}_settings"):
            mode_tabs, pictures, batch, tabs = _mode_tabs()
            w["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0],
                                        label="Resize mode", elem_id="resize_mode")
            PN.build_sampler(PREFIX, w)
            _resize_rows(runtime, w)
            PN.build_cfg(PREFIX, w, runtime)
            w["denoising_strength"] = gr.Slider(0, 1, value=0.75, step=0.01,
                                                label="Denoising strength",
                                                elem_id=f"{PREFIX}_denoising_strength")
            extra_rows = PN.build_seed_rows(PREFIX, w, tools)
            inpaint_options = _inpaint_options(w)
            PN.build_tiling(PREFIX, w)
            toggles = [PN.build_refiner(runtime, PREFIX, w)]
            scripts = build_scripts(runtime, PREFIX, is_img2img=True)
            PN.build_hidden_fields(PREFIX, w)
        with gr.Column(scale=1, elem_id=f"{PREFIX}_results"):
            results = build_results(PREFIX)
    panel = PN.GenerationPanel(prefix=PREFIX, names=I.IMG2IMG_FIELDS, fields=w,
                               results_ui=results, scripts=scripts, tools=tools,
                               seed_extra_rows=extra_rows, toggles=toggles, **top)
    tab = Img2ImgTab(panel=panel, mode=mode, mode_tabs=mode_tabs, pictures=pictures,
                     batch=batch, inpaint_options=inpaint_options)
    _wire(runtime, tab, tabs)
    _wire_interrogate(runtime, tab, interrogators)
    return tab


def _interrogate_row() -> dict[str, gr.Button]:
    """A1111's "Interrogate CLIP" / "Interrogate DeepBooru" under the prompts."""
    with gr.Row(elem_id=f"{PREFIX}_interrogate_row"):
        return {"clip": gr.Button("Interrogate CLIP", elem_id="interrogate", size="sm"),
                "deepdanbooru": gr.Button("Interrogate DeepBooru", elem_id="deepbooru",
                                          size="sm")}


def _wire_interrogate(runtime, tab: Img2ImgTab, buttons: dict[str, gr.Button]) -> None:
    """Each button replaces the prompt with the interrogation of the sub-tab's picture."""
    for model, button in buttons.items():
        button.click(lambda mode, *values, m=model: interrogate_prompt(
            runtime, m, mode, dict(zip(PICTURES, values))),
            [tab.mode, *tab.picture_inputs()], [tab.panel.fields["prompt"]])


def interrogate_prompt(runtime, model: str, mode: str, pictures: dict[str, Any]) -> str:
    """The caption of the selected sub-tab's picture by `model` ("clip" / "deepdanbooru");
    a missing picture or model, or an unusable file, is a visible error."""
    picture = {"img2img": pictures.get("image"), "inpaint_upload": pictures.get("upload")
               }.get(mode) or I.editor_background(pictures.get(mode))
    if picture is None:
        raise gr.Error(f"{I.MODE_TITLES.get(mode, mode)}: add a picture to interrogate first")
    try:
        return interrogate(runtime, picture.convert("RGB"), model)
    except (InterrogatorMissing, ModelLoadError) as error:
        raise gr.Error(without_paths(str(error))) from error


def _mode_tabs() -> tuple[gr.Tabs, dict[str, Any], dict[str, Any], dict[str, gr.Tab]]:
    pictures: dict[str, Any] = {}
    batch: dict[str, Any] = {}
    tabs: dict[str, gr.Tab] = {}
    with gr.Tabs(elem_id=f"mode_{PREFIX}") as mode_tabs:
        with gr.Tab("img2img", id="img2img", elem_id=f"{PREFIX}_img2img_tab") as tabs["img2img"]:
            pictures["image"] = gr.Image(label="Image for img2img", type="pil", format="png",
                                         image_mode="RGBA", sources=["upload", "clipboard"],
                                         height=EDITOR_HEIGHT, elem_id=f"{PREFIX}_image")
        with gr.Tab("Sketch", id="sketch",
                    elem_id=f"{PREFIX}_img2img_sketch_tab") as tabs["sketch"]:
            pictures["sketch"] = _editor("sketch", "Image for img2img", SKETCH_COLORS)
        with gr.Tab("Inpaint", id="inpaint", elem_id=f"{PREFIX}_inpaint_tab") as tabs["inpaint"]:
            pictures["inpaint"] = _editor("inpaint", "Image for inpainting with mask",
                                          ["#ffffff"])
        with gr.Tab("Inpaint sketch", id="inpaint_sketch",
                    elem_id=f"{PREFIX}_inpaint_sketch_tab") as tabs["inpaint_sketch"]:
            pictures["inpaint_sketch"] = _editor("inpaint_sketch", "Color sketch inpainting",
                                                 SKETCH_COLORS)
        with gr.Tab("Inpaint upload", id="inpaint_upload",
                    elem_id=f"{PREFIX}_inpaint_upload_tab") as tabs["inpaint_upload"]:
            pictures["upload"] = gr.Image(label="Image for img2img", type="pil", format="png",
                                          image_mode="RGBA", elem_id="img_inpaint_base")
            pictures["upload_mask"] = gr.Image(label="Mask", type="pil", format="png",
                                               image_mode="RGBA", elem_id="img_inpaint_mask")
        with gr.Tab("Batch", id="batch", elem_id=f"{PREFIX}_batch_tab") as tabs["batch"]:
            _batch_inputs(batch)
    return mode_tabs, pictures, batch, tabs


def _editor(name: str, label: str, colors: list[str]) -> gr.ImageEditor:
    fixed = len(colors) == 1
    return gr.ImageEditor(
        label=label, type="pil", format="png", image_mode="RGBA", height=EDITOR_HEIGHT,
        sources=["upload", "clipboard"], layers=False, transforms=(),
        brush=gr.Brush(colors=colors, default_color=colors[0],
                       color_mode="fixed" if fixed else "defaults", default_size=12),
        elem_id=f"{PREFIX}_{name}" if name != "inpaint" else "img2maskimg")


def _batch_inputs(batch: dict[str, Any]) -> None:
    gr.Markdown("Process images in a folder on the same machine where the server is running. "
                "Leave the output folder empty to save in the normal img2img output folder.")
    batch["input_dir"] = gr.Textbox(label="Input directory", elem_id=f"{PREFIX}_batch_input_dir")
    batch["output_dir"] = gr.Textbox(label="Output directory",
                                     elem_id=f"{PREFIX}_batch_output_dir")
    batch["mask_dir"] = gr.Textbox(label="Inpaint batch mask directory (required for inpaint "
                                         "batch processing only)",
                                   elem_id=f"{PREFIX}_batch_inpaint_mask_dir")
    with gr.Accordion("PNG info", open=False):
        batch["png_info"] = gr.Checkbox(label="Append png info to prompts",
                                        elem_id=f"{PREFIX}_batch_use_png_info")
        batch["png_info_props"] = gr.CheckboxGroup(list(PNG_INFO_PROPS), value=[],
                                                   label="Parameters to take from png info",
                                                   elem_id=f"{PREFIX}_batch_png_info_props")
        batch["png_info_dir"] = gr.Textbox(label="PNG info directory", placeholder=(
            "Leave empty to use input directory"), elem_id=f"{PREFIX}_batch_png_info_dir")


def _resize_rows(runtime, w: dict[str, Any]) -> None:
    """"Resize to" (width/height with ⇅) or "Resize by" (a scale), then the batch row."""
    size = PN.native_size(runtime)
    w["resize_by"] = gr.State(I.RESIZE_TO)
    with gr.Tabs(elem_id=f"{PREFIX}_column_size"):
        with gr.Tab(I.RESIZE_TO, id="to", elem_id=f"{PREFIX}_tab_resize_to") as to_tab:
            with gr.Row():
                with gr.Column(scale=4, min_width=160):
                    w["width"] = gr.Slider(64, 2048, value=size, step=8, label="Width",
                                           elem_id=f"{PREFIX}_width")
                    w["height"] = gr.Slider(64, 2048, value=size, step=8, label="Height",
                                            elem_id=f"{PREFIX}_height")
                swap = PN.tool_button(PN.SWAP_SYMBOL, elem_id=f"{PREFIX}_res_switch_btn")
        with gr.Tab(I.RESIZE_BY, id="by", elem_id=f"{PREFIX}_tab_resize_by") as by_tab:
            w["scale_by"] = gr.Slider(0.05, 4.0, value=1.0, step=0.05, label="Scale",
                                      elem_id=f"{PREFIX}_scale")
    with gr.Row():
        w["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                elem_id=f"{PREFIX}_batch_count")
        w["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size",
                                    elem_id=f"{PREFIX}_batch_size")
    swap.click(lambda a, b: (b, a), [w["width"], w["height"]], [w["width"], w["height"]],
               queue=False, show_progress="hidden")
    to_tab.select(lambda: I.RESIZE_TO, None, w["resize_by"], queue=False)
    by_tab.select(lambda: I.RESIZE_BY, None, w["resize_by"], queue=False)


def _inpaint_options(w: dict[str, Any]) -> gr.Group:
    with gr.Group(visible=False, elem_id=f"{PREFIX}_inpaint_controls") as group:
        w["mask_blur"] = gr.Slider(0, 64, value=4, step=1, label="Mask blur",
                                   elem_id=f"{PREFIX}_mask_blur")
        w["inpainting_mask_invert"] = gr.Radio(list(I.MASK_MODES), value=I.MASK_MODES[0],
                                               label="Mask mode", elem_id=f"{PREFIX}_mask_mode")
        w["inpainting_fill"] = gr.Radio(list(MASKED_CONTENT), value="original",
                                        label="Masked content",
                                        elem_id=f"{PREFIX}_inpainting_fill")
        with gr.Row():
            w["inpaint_full_res"] = gr.Radio(list(I.INPAINT_AREAS), value=I.INPAINT_AREAS[0],
                                             label="Inpaint area",
                                             elem_id=f"{PREFIX}_inpaint_full_res")
            w["inpaint_full_res_padding"] = gr.Slider(0, 256, value=32, step=4,
                                                      label="Only masked padding, pixels",
                                                      elem_id=f"{PREFIX}_inpaint_full_res_padding")
    return group


# ---------------------------------------------------------------- events


def _wire(runtime, tab: Img2ImgTab, tabs: dict[str, gr.Tab]) -> None:
    for mode, sub_tab in tabs.items():
        sub_tab.select(lambda m=mode: (m, gr.update(visible=m in I.INPAINT_MODES)), None,
                       [tab.mode, tab.inpaint_options], queue=False)
    wire_panel(runtime, tab.panel,
               output_folder=lambda: runtime.settings.current.outdir_img2img_samples)
    extra = [tab.mode, *tab.picture_inputs(), *[tab.batch[name] for name in BATCH]]

    def run(fields: dict[str, Any], mode: str, *values):
        pictures = dict(zip(PICTURES, values[:len(PICTURES)]))
        batch = dict(zip(BATCH, values[len(PICTURES):]))
        return generate(runtime, fields, mode, pictures, batch)

    wire_generate(runtime, tab.panel, run, extra)


def generate(runtime, fields: dict[str, Any], mode: str, pictures: dict[str, Any],
             batch: dict[str, Any] | None = None) -> Iterator[tuple]:
    """Submit an img2img job for the sub-tab `mode`; yield what the page shows."""
    folder = runtime.settings.current.outdir_img2img_samples
    if mode == "batch":
        task = batch_task(runtime, fields, batch or {})
    else:
        try:
            images, mask = I.mode_images(mode, **pictures)
            params = I.img2img_params_from_fields(fields, images, mask)
        except ParamsError as error:
            raise gr_error(error) from error
        params = checked_request(runtime, params, is_img2img=True)
        started = time.time()
        job = submit_generation(runtime, "img2img", params)
        yield from poll_job(runtime, job, started=started, folder=folder)
        return
    started = time.time()
    job = runtime.jobs.submit(task)
    yield from poll_job(runtime, job, started=started, folder=folder)


def batch_task(runtime, fields: dict[str, Any], batch: dict[str, Any]):
    """The job of the Batch sub-tab: every image of the input folder, one result."""
    try:
        params = I.img2img_params_from_fields(fields, [], None)
    except ParamsError as error:
        raise gr_error(error) from error
    params = checked_request(runtime, params, is_img2img=True, full=False)
    folders = batch_folders(runtime, batch)
    props = tuple(batch.get("png_info_props") or ()) if batch.get("png_info") else ()

    def task():
        results = yield from img2img_batch(runtime, params, png_info_props=props, **folders)
        return merged(results)
    return task


def batch_folders(runtime, batch: dict[str, Any]) -> dict[str, Path | None]:
    """The folders of a batch run; a missing input folder is an error naming the field.
    With --hide-ui-dir-config no folder typed in the UI is used (as Extras)."""
    if getattr(runtime.args, "hide_ui_dir_config", False):
        raise gr.Error("Input directory: batch from directory is disabled "
                       "(--hide-ui-dir-config)")
    source = (batch.get("input_dir") or "").strip()
    if not source or not Path(source).is_dir():
        raise gr.Error(f"Input directory: {source!r} is not a folder on the server")
    output = (batch.get("output_dir") or "").strip()
    masks = (batch.get("mask_dir") or "").strip()
    info = (batch.get("png_info_dir") or "").strip()
    for label, folder in (("Inpaint batch mask directory", masks), ("PNG info directory", info)):
        if folder and not Path(folder).is_dir():
            raise gr.Error(f"{label}: {folder!r} is not a folder on the server")
    default = runtime.paths.output_dir(runtime.settings.current.outdir_img2img_samples)
    return {"input_dir": Path(source), "output_dir": Path(output) if output else default,
            "mask_dir": Path(masks) if masks else None,
            "png_info_dir": Path(info) if info else None}


def merged(results: list[GenerationResult]) -> GenerationResult:
    """The results of a batch run as one, for the gallery."""
    total = GenerationResult(images=[], infotexts=[], seeds=[], subseeds=[], prompts=[],
                             negative_prompts=[])
    for result in results:
        for name in ("images", "infotexts", "seeds", "subseeds", "prompts", "negative_prompts",
                     "saved_paths", "warnings"):
            getattr(total, name).extend(getattr(result, name))
        total.interrupted |= result.interrupted
    return total


def send_target(runtime, tab: Img2ImgTab, mode: str):
    """Where "Send to img2img" (mode "img2img") or "Send to inpaint" ("inpaint") puts a
    picture: that sub-tab's input, with the picture's parameters pasted into the fields."""
    from webui.panel_results import empty_results
    from webui.panel_wiring import paste_values, updates_for
    from webui.send_to import SendTarget, editor_value

    def extra(picture, text: str) -> list:
        values = paste_values(runtime, text, empty_results(), names=I.IMG2IMG_FIELDS) \
            if text else {}
        scripts = tab.panel.scripts
        alwayson = scripts.paste_updates(text) if scripts is not None else []
        return [mode, gr.Tabs(selected=mode), gr.update(visible=mode in I.INPAINT_MODES),
                *updates_for(values, I.IMG2IMG_FIELDS), *alwayson]

    return SendTarget(tab="img2img", image=tab.pictures["image" if mode == "img2img" else mode],
                      picture_value=(lambda p: p) if mode == "img2img" else editor_value,
                      extra_outputs=[tab.mode, tab.mode_tabs, tab.inpaint_options,
                                     *tab.panel.paste_widgets()],
                      extra_values=extra)
