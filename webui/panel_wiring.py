"""Events of the generation panel that every tab shares.

Token counters, seeds, the hires/refiner/"Extra" toggles, paste (↙️), clear (🗑️),
styles, extra-network cards, the gallery buttons, and Generate / Interrupt / Skip
around a tab's own generate function. A tab gives `wire_generate` a function
`(fields, *extra) -> iterator of (gallery, infotext, progress, results)`; the rest is
here, so txt2img and img2img behave the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from webui import fields as F
from webui import panel_results as R
from webui import progress as P
from webui.extra_networks import wire_networks
from webui.panel import GenerationPanel
from webui.styles_ui import wire_styles
from webui.widgets import loaded_model

log = logging.getLogger(__name__)


def token_counter(runtime, text: str, steps: float, *, is_positive: bool = True) -> str:
    """"N/75" as A1111 shows over a prompt box; "–/75" until a model is loaded."""
    loaded = loaded_model(runtime)
    if loaded is None:
        return "\u2013/75"
    tokens, capacity = loaded.conditioner.token_count(text or "", steps=int(steps or 20),
                                                      is_positive=is_positive)
    return f"{tokens}/{capacity}"


def pasted_text(text: str | None, results: dict[str, Any]) -> str:
    """The infotext a paste reads: the prompt box's, or with it empty the last
    generation's ("" when there is none)."""
    if (text or "").strip():
        return text or ""
    texts = results.get("infotexts") or []
    return texts[0] if texts else ""


def paste_values(runtime, text: str, results: dict[str, Any], *,
                 names: tuple[str, ...] = F.FIELDS) -> dict[str, Any]:
    """Field values from pasted infotext; an empty prompt box pastes the last generation."""
    text = pasted_text(text, results)
    if not text:
        return {}
    loaded = loaded_model(runtime)
    return F.fields_from_infotext(text, runtime.settings.current,
                                  loaded.shorthash if loaded is not None else None, names=names)


def updates_for(values: dict[str, Any], names: tuple[str, ...] = F.FIELDS) -> list:
    """One update per field widget (in `names` order); fields not in `values` are kept."""
    updates = []
    for name in names:
        if name not in values:
            updates.append(gr.skip())
        elif name == "override_settings":
            entries = values[name]
            updates.append(gr.update(choices=entries, value=entries, visible=bool(entries)))
        else:
            updates.append(values[name])
    return updates


def paste_updates(runtime, panel: GenerationPanel, text: str | None,
                  results: dict[str, Any]) -> list:
    """One update per `panel.paste_widgets()` for pasting `text` (the ↙️ button, "Send
    to"): the fields, then the always-on scripts' widgets; what the text lacks is kept."""
    values = paste_values(runtime, text or "", results, names=panel.names)
    updates = updates_for(values, panel.names)
    if panel.scripts is not None:
        updates += panel.scripts.paste_updates(pasted_text(text, results))
    return updates


def wire_panel(runtime, panel: GenerationPanel, *, output_folder: Callable[[], str]) -> None:
    """Everything but Generate (see `wire_generate`)."""
    f = panel.fields
    for name, positive in (("prompt", True), ("negative_prompt", False)):
        f[name].change(lambda text, steps, p=positive: token_counter(runtime, text, steps,
                                                                     is_positive=p),
                       [f[name], f["steps"]], panel.token_counters[name],
                       trigger_mode="always_last", show_progress="hidden",
                       concurrency_limit=None)
    panel.paste.click(lambda text, results: paste_updates(runtime, panel, text, results),
                      [f["prompt"], panel.results], panel.paste_widgets(), queue=False)
    panel.clear.click(lambda: ("", ""), None, [f["prompt"], f["negative_prompt"]], queue=False)
    for checkbox, group in panel.toggles:
        checkbox.change(lambda on: gr.update(visible=on), checkbox, group, queue=False)
    wire_styles(runtime, panel.styles, f["prompt"], f["negative_prompt"])
    wire_networks(runtime, panel.networks, panel.networks_button)
    _wire_seeds(panel)
    _wire_gallery_buttons(runtime, panel, output_folder)


def _wire_seeds(panel: GenerationPanel) -> None:
    f, t, results = panel.fields, panel.tools, panel.results
    t["random_seed"].click(lambda: -1, None, f["seed"], queue=False)
    t["random_subseed"].click(lambda: -1, None, f["subseed"], queue=False)
    t["reuse_seed"].click(lambda r: R.reuse_seed(r, "seeds"), results, f["seed"], queue=False)
    t["reuse_subseed"].click(lambda r: R.reuse_seed(r, "subseeds"), results, f["subseed"],
                             queue=False)
    rows = panel.seed_extra_rows
    f["seed_extras"].change(lambda on: [gr.update(visible=on)] * len(rows),
                            f["seed_extras"], rows, queue=False)

    def select(results: dict, evt: gr.SelectData):
        results = {**results, "selected": evt.index}
        return R.infotext_html(results, evt.index), results

    panel.gallery.select(select, results, [panel.infotext, results], queue=False)


def _wire_gallery_buttons(runtime, panel: GenerationPanel, output_folder) -> None:
    ui = panel.results_ui
    ui.save.click(lambda gallery, results: R.save_selected(runtime, gallery, results),
                  [ui.gallery, ui.results], ui.download, queue=False)
    ui.zip.click(lambda gallery: R.zip_gallery(runtime, gallery), ui.gallery, ui.download,
                 queue=False)
    ui.open_folder.click(lambda results: R.folder_html(runtime, results, output_folder()),
                         ui.results, ui.folder_info, queue=False)


def wire_generate(runtime, panel: GenerationPanel,
                  generate: Callable[..., Iterator[tuple]], extra_inputs: list | None = None
                  ) -> None:
    """Generate runs `generate(fields, *extra)`; Interrupt/Skip replace it meanwhile."""
    wire_run(panel, panel.generate, generate, extra_inputs)
    panel.interrupt.click(lambda: runtime.jobs.interrupt() and None, queue=False)
    panel.skip.click(lambda: runtime.jobs.skip() and None, queue=False)


def wire_run(panel: GenerationPanel, trigger, generate: Callable[..., Iterator[tuple]],
             extra_inputs: list | None = None) -> None:
    """`trigger` runs `generate(fields, *extra)` into the gallery, as Generate does; an
    error shows in the progress area, naming the field, until the next run clears it."""
    extra_inputs = list(extra_inputs or [])
    script_inputs = panel.scripts.inputs() if panel.scripts is not None else []
    inputs = [*panel.field_widgets(), *extra_inputs, *script_inputs]
    count, extra_count = len(panel.names), len(extra_inputs)
    outputs = [panel.gallery, panel.infotext, panel.progress, panel.results,
               panel.generate, panel.interrupt, panel.skip]

    def run(*values):
        fields = dict(zip(panel.names, values[:count]))
        extra = values[count:count + extra_count]
        keep = [gr.skip()] * 3
        # The idle bar replaces the last run's error (it stays until this next run).
        yield (gr.skip(), gr.skip(), P.idle_html(), gr.skip(), *running(True))
        try:
            if panel.scripts is not None:  # may refuse a script's values (gr.Error)
                fields.update(panel.scripts.request(list(values[count + extra_count:])))
            for update in generate(fields, *extra):
                yield (*update, *keep)
        except Exception as error:  # shown where the result would be, until the next run
            if not isinstance(error, gr.Error):
                log.exception("generation failed")
            yield (gr.skip(), gr.skip(), R.error_html(R.error_message(error)), gr.skip(),
                   *running(False))
            return
        yield (*[gr.skip()] * 4, *running(False))

    trigger.click(run, inputs, outputs, concurrency_limit=None, show_progress="hidden",
                  api_name=False)
    download = getattr(getattr(panel, "results_ui", None), "download", None)
    if download is not None:  # the last result's download link goes with that result
        trigger.click(lambda: gr.update(value=None, visible=False), None, download,
                      queue=False, api_name=False)


def running(on: bool) -> list:
    return [gr.update(visible=not on), gr.update(visible=on), gr.update(visible=on)]
