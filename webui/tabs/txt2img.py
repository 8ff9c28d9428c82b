"""The txt2img tab, laid out as A1111 users know it.

Prompts with token counters and the Generate / Interrupt / Skip buttons on top;
generation settings on the left (sampler, schedule type, steps, size with ⇅, batch,
CFG, seed with 🎲/♻️ and the "Extra" variation row); the gallery (a grid first when a
job made several images, as A1111 does), progress bar and generation info on the right. The handlers here only convert widget values to a
`Txt2ImgParams` (see `webui.fields`) and submit `processing.txt2img` to the runtime's
job queue, which the HTTP API shares; the bar polls the running job.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import gradio as gr

from modules.grid import image_grid
from modules.models.errors import ModelLoadError
from modules.params import ParamsError, Txt2ImgParams
from modules.processing import txt2img
from modules.sampling import registry
from webui import fields as F
from webui import progress as P
from webui.widgets import loaded_model, tool_button

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25
RANDOM_SYMBOL, REUSE_SYMBOL = "\U0001f3b2", "\u267b\ufe0f"  # 🎲 ♻️
PASTE_SYMBOL, SWAP_SYMBOL = "\u2199\ufe0f", "\u21c5"  # ↙️ ⇅


@dataclass
class Txt2ImgTab:
    """The tab's widgets; `fields` maps request field names to their widgets."""

    fields: dict[str, Any]
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    token_counters: dict[str, gr.HTML]
    gallery: gr.Gallery
    infotext: gr.HTML
    progress: gr.HTML
    results: gr.State
    tools: dict[str, gr.Button] = field(default_factory=dict)  # 🎲 / ♻️ beside the seeds
    seed_extra_rows: list[Any] = field(default_factory=list)  # shown by "Extra"

    def field_widgets(self) -> list[Any]:
        return [self.fields[name] for name in F.FIELDS]


# ---------------------------------------------------------------- layout


def build(runtime) -> Txt2ImgTab:
    """Create the widgets (inside the current `gr.Tab`) and wire their events."""
    widgets: dict[str, Any] = {}
    tools: dict[str, gr.Button] = {}
    counters, buttons = _prompt_row(widgets)
    with gr.Row(elem_id="txt2img_main"):
        with gr.Column(scale=1, elem_id="txt2img_settings"):
            extra_rows = _settings_column(runtime, widgets, tools)
        with gr.Column(scale=1, elem_id="txt2img_results"):
            progress = gr.HTML(P.idle_html(), elem_id="txt2img_progress")
            gallery = gr.Gallery(label="Output", format="png", columns=2, height=512,
                                 object_fit="contain", elem_id="txt2img_gallery",
                                 interactive=False, buttons=["download", "fullscreen"])
            infotext = gr.HTML(elem_id="txt2img_infotext", elem_classes=["infotext"])
    tab = Txt2ImgTab(fields=widgets, token_counters=counters, gallery=gallery,
                     infotext=infotext, progress=progress, results=gr.State(empty_results()),
                     tools=tools, seed_extra_rows=extra_rows, **buttons)
    wire(runtime, tab)
    return tab


def _prompt_row(widgets: dict[str, Any]) -> tuple[dict[str, gr.HTML], dict[str, gr.Button]]:
    counters: dict[str, gr.HTML] = {}
    with gr.Row(elem_id="txt2img_toprow"):
        with gr.Column(scale=6, elem_id="txt2img_prompts"):
            for name, placeholder in (("prompt", "Prompt (press Ctrl+Enter to generate)"),
                                      ("negative_prompt", "Negative prompt")):
                with gr.Column(elem_classes=["prompt-box"]):
                    counters[name] = gr.HTML("0/75", elem_id=f"txt2img_{name}_token_counter",
                                             elem_classes=["token-counter"])
                    widgets[name] = gr.Textbox(label=F.label_for(name), show_label=False,
                                               lines=3, max_lines=12, placeholder=placeholder,
                                               elem_id=f"txt2img_{name}")
        with gr.Column(scale=1, min_width=180, elem_id="txt2img_actions"):
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate",
                                 size="lg")
            with gr.Row():
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt", visible=False)
                skip = gr.Button("Skip", elem_id="txt2img_skip", visible=False)
            with gr.Row(elem_classes=["tool-row"]):
                paste = tool_button(PASTE_SYMBOL, elem_id="txt2img_paste")
    return counters, dict(generate=generate, interrupt=interrupt, skip=skip, paste=paste)


def _settings_column(runtime, w: dict[str, Any], tools: dict[str, gr.Button]) -> list[Any]:
    size = native_size(runtime)
    with gr.Row():
        w["sampler_name"] = gr.Dropdown([s.label for s in registry.SAMPLERS], value="DPM++ 2M",
                                        label="Sampling method", elem_id="txt2img_sampling")
        w["scheduler"] = gr.Dropdown([s.label for s in registry.SCHEDULERS], value="Automatic",
                                     label="Schedule type", elem_id="txt2img_scheduler")
    w["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps",
                           elem_id="txt2img_steps")
    with gr.Row():
        with gr.Column(scale=4, min_width=160):
            w["width"] = gr.Slider(64, 2048, value=size, step=8, label="Width",
                                   elem_id="txt2img_width")
            w["height"] = gr.Slider(64, 2048, value=size, step=8, label="Height",
                                    elem_id="txt2img_height")
        swap = tool_button(SWAP_SYMBOL, elem_id="txt2img_res_switch_btn")
        with gr.Column(scale=3, min_width=160):
            w["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                    elem_id="txt2img_batch_count")
            w["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size",
                                        elem_id="txt2img_batch_size")
    w["cfg_scale"] = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale",
                               elem_id="txt2img_cfg_scale")
    swap.click(lambda a, b: (b, a), [w["width"], w["height"]], [w["width"], w["height"]],
               queue=False, show_progress="hidden")
    extras = _seed_rows(w, tools)
    w["override_settings"] = gr.Dropdown([], value=[], multiselect=True, visible=False,
                                         label="Override settings",
                                         elem_id="txt2img_override_settings")
    return extras


def _seed_rows(w: dict[str, Any], tools: dict[str, gr.Button]) -> list[Any]:
    with gr.Row(elem_id="txt2img_seed_row", equal_height=True):
        w["seed"] = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed",
                              scale=4)
        tools["random_seed"] = tool_button(RANDOM_SYMBOL, elem_id="txt2img_random_seed")
        tools["reuse_seed"] = tool_button(REUSE_SYMBOL, elem_id="txt2img_reuse_seed")
        w["seed_extras"] = gr.Checkbox(label="Extra", value=False, elem_id="txt2img_subseed_show",
                                       scale=1, min_width=80)
    with gr.Row(visible=False, elem_id="txt2img_subseed_row") as variation:
        w["subseed"] = gr.Number(label="Variation seed", value=-1, precision=0,
                                 elem_id="txt2img_subseed", scale=4)
        tools["random_subseed"] = tool_button(RANDOM_SYMBOL, elem_id="txt2img_random_subseed")
        tools["reuse_subseed"] = tool_button(REUSE_SYMBOL, elem_id="txt2img_reuse_subseed")
        w["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                          elem_id="txt2img_subseed_strength", scale=4)
    with gr.Row(visible=False, elem_id="txt2img_seed_resize_row") as resize:
        w["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8,
                                            label="Resize seed from width",
                                            elem_id="txt2img_seed_resize_from_w")
        w["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8,
                                            label="Resize seed from height",
                                            elem_id="txt2img_seed_resize_from_h")
    return [variation, resize]


def native_size(runtime) -> int:
    loaded = loaded_model(runtime)
    return loaded.family.native_resolution if loaded is not None else 512


# ---------------------------------------------------------------- handlers


def empty_results() -> dict[str, Any]:
    return {"infotexts": [], "seeds": [], "subseeds": [], "selected": 0, "time": 0.0}


def token_counter(runtime, text: str, steps: float, *, is_positive: bool = True) -> str:
    """"N/75" as A1111 shows over a prompt box; "–/75" until a model is loaded."""
    loaded = loaded_model(runtime)
    if loaded is None:
        return "\u2013/75"
    tokens, capacity = loaded.conditioner.token_count(text or "", steps=int(steps or 20),
                                                      is_positive=is_positive)
    return f"{tokens}/{capacity}"


def checked_params(values: dict[str, Any]) -> Txt2ImgParams:
    """Widget values -> a validated request; a bad field becomes a visible error naming it."""
    params = F.params_from_fields(values)
    try:
        params.validate()
    except ParamsError as error:
        raise gr.Error(f"{F.label_for(error.field)}: {error.reason}") from error
    return params


def generate(runtime, values: dict[str, Any]) -> Iterator[tuple]:
    """Submit a txt2img job; yield (gallery, infotext, progress, results) while it runs."""
    params = checked_params(values)
    started = time.time()
    job = runtime.jobs.submit(lambda: txt2img(runtime, params))
    shown_preview = None
    while True:
        try:
            result = job.wait(POLL_SECONDS)
            break
        except TimeoutError:
            preview = job.progress.preview if job.progress is not None else None
            gallery = [preview] if preview is not None and preview is not shown_preview \
                else gr.skip()
            shown_preview = preview or shown_preview
            yield gallery, gr.skip(), P.progress_html(runtime, job), gr.skip()
        except ParamsError as error:
            raise gr.Error(f"{F.label_for(error.field)}: {error.reason}") from error
        except (ValueError, ModelLoadError) as error:
            raise gr.Error(str(error)) from error
        except Exception as error:
            log.exception("txt2img failed")
            raise gr.Error(f"Generation failed: {error}") from error
    for warning in result.warnings:
        gr.Warning(warning)
    with_grid = len(result.images) > 1 and runtime.settings.current.return_grid
    first = [0] if with_grid else []  # the grid shows the first image's parameters
    results = {"infotexts": [result.infotexts[i] for i in first] + list(result.infotexts),
               "seeds": [result.seeds[i] for i in first] + list(result.seeds),
               "subseeds": [result.subseeds[i] for i in first] + list(result.subseeds),
               "selected": 0, "time": time.time() - started}
    images = ([image_grid(result.images)] if with_grid else []) + list(result.images)
    yield (gallery_images(images, results["infotexts"]), infotext_html(results, 0),
           P.idle_html(), results)


def gallery_images(images: list, infotexts: list[str]) -> list:
    """PIL images with their infotext attached, so the PNG the gallery serves keeps it."""
    shown = []
    for image, text in zip(images, infotexts):
        copy = image.copy()
        copy.info["parameters"] = text
        shown.append(copy)
    return shown


def infotext_html(results: dict[str, Any], index: int) -> str:
    texts = results.get("infotexts") or []
    if not texts:
        return ""
    text = texts[min(index, len(texts) - 1)]
    body = html.escape(text).replace("\n", "<br>")
    return (f'<div class="infotext"><p>{body}</p>'
            f'<p class="time-taken">Time taken: {results.get("time", 0):.1f} sec.</p></div>')


def reuse_seed(results: dict[str, Any], key: str) -> int:
    """The seed (or variation seed) of the selected image, -1 when nothing was made yet."""
    values = results.get(key) or []
    if not values:
        return -1
    return int(values[min(results.get("selected", 0), len(values) - 1)])


def paste_values(runtime, text: str, results: dict[str, Any]) -> dict[str, Any]:
    """Field values from pasted infotext; an empty prompt box pastes the last generation."""
    if not (text or "").strip():
        texts = results.get("infotexts") or []
        if not texts:
            return {}
        text = texts[0]
    loaded = loaded_model(runtime)
    return F.fields_from_infotext(text, runtime.settings.current,
                                  loaded.shorthash if loaded is not None else None)


def updates_for(values: dict[str, Any]) -> list:
    """One update per field widget (in `FIELDS` order); fields not in `values` are kept."""
    updates = []
    for name in F.FIELDS:
        if name not in values:
            updates.append(gr.skip())
        elif name == "override_settings":
            entries = values[name]
            updates.append(gr.update(choices=entries, value=entries, visible=bool(entries)))
        else:
            updates.append(values[name])
    return updates


# ---------------------------------------------------------------- events


def wire(runtime, tab: Txt2ImgTab) -> None:
    f, inputs = tab.fields, tab.field_widgets()
    for name, positive in (("prompt", True), ("negative_prompt", False)):
        f[name].change(lambda text, steps, p=positive: token_counter(runtime, text, steps,
                                                                     is_positive=p),
                       [f[name], f["steps"]], tab.token_counters[name],
                       trigger_mode="always_last", show_progress="hidden",
                       concurrency_limit=None)
    outputs = [tab.gallery, tab.infotext, tab.progress, tab.results,
               tab.generate, tab.interrupt, tab.skip]

    def run(*values):
        """`generate`, with Interrupt/Skip shown in place of Generate while it runs."""
        keep = [gr.skip()] * 3
        yield (*[gr.skip()] * 4, *_running(True))
        try:
            for update in generate(runtime, dict(zip(F.FIELDS, values))):
                yield (*update, *keep)
        except Exception:
            yield (gr.skip(), gr.skip(), P.idle_html(), gr.skip(), *_running(False))
            raise
        yield (*[gr.skip()] * 4, *_running(False))

    tab.generate.click(run, inputs, outputs, concurrency_limit=None, show_progress="hidden",
                       api_name=False)
    tab.interrupt.click(lambda: runtime.jobs.interrupt() and None, queue=False)
    tab.skip.click(lambda: runtime.jobs.skip() and None, queue=False)
    tab.paste.click(lambda text, results: updates_for(paste_values(runtime, text, results)),
                    [f["prompt"], tab.results], inputs, queue=False)
    _wire_seeds(tab)


def _running(running: bool) -> list:
    return [gr.update(visible=not running), gr.update(visible=running),
            gr.update(visible=running)]


def _wire_seeds(tab: Txt2ImgTab) -> None:
    f, t = tab.fields, tab.tools
    t["random_seed"].click(lambda: -1, None, f["seed"], queue=False)
    t["random_subseed"].click(lambda: -1, None, f["subseed"], queue=False)
    t["reuse_seed"].click(lambda r: reuse_seed(r, "seeds"), tab.results, f["seed"], queue=False)
    t["reuse_subseed"].click(lambda r: reuse_seed(r, "subseeds"), tab.results, f["subseed"],
                              queue=False)
    f["seed_extras"].change(lambda on: [gr.update(visible=on)] * len(tab.seed_extra_rows),
                            f["seed_extras"], tab.seed_extra_rows, queue=False)

    def select(results: dict, evt: gr.SelectData):
        results = {**results, "selected": evt.index}
        return infotext_html(results, evt.index), results

    tab.gallery.select(select, tab.results, [tab.infotext, tab.results], queue=False)
