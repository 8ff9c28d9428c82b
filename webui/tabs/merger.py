"""The Checkpoint Merger tab: pick A, B, C, a method and options; write a new checkpoint.

Laid out as A1111's (`modelmerger_*` element ids). The handler turns the widgets into a
`MergeParams` and calls `modules.models.merge.run_merge`; afterwards the three model
dropdowns and the top bar's checkpoint list are refreshed so the new file can be picked.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from modules.errors import without_paths
from modules.models.errors import ModelLoadError
from modules.models.merge import (
    CHECKPOINT_FORMATS,
    CONFIG_SOURCES,
    INTERP_METHODS,
    MergeParams,
    run_merge,
    vae_choices,
)
from modules.pipeline.params import ParamsError
from webui.widgets import REFRESH_SYMBOL, checkpoint_titles, tool_button

LABELS = {
    "primary_model_name": "Primary model (A)", "secondary_model_name": "Secondary model (B)",
    "tertiary_model_name": "Tertiary model (C)", "custom_name": "Custom Name (Optional)",
    "multiplier": "Multiplier (M) - set to 0 to get model A",
    "interp_method": "Interpolation Method",
    "checkpoint_format": "Checkpoint format", "save_as_half": "Save as float16",
    "config_source": "Copy config from", "bake_in_vae": "Bake in VAE",
    "discard_weights": "Discard weights with matching name", "save_metadata": "Save metadata",
    "add_merge_recipe": "Add merge recipe metadata",
    "copy_metadata_fields": "Copy metadata from merged models",
    "metadata_json": "Metadata in JSON format",
}
MODEL_FIELDS = ("primary_model_name", "secondary_model_name", "tertiary_model_name")
FIELD_ORDER = (*MODEL_FIELDS, "custom_name", "multiplier", "interp_method", "checkpoint_format",
               "save_as_half", "config_source", "bake_in_vae", "discard_weights",
               "save_metadata", "add_merge_recipe", "copy_metadata_fields", "metadata_json")


@dataclass
class MergerTab:
    fields: dict[str, Any]
    refresh: gr.Button
    merge: gr.Button
    result: gr.HTML


def build(runtime, checkpoint_dropdown: gr.Dropdown | None = None) -> MergerTab:
    """The tab; `checkpoint_dropdown` (the top bar's) is refreshed after a merge."""
    f: dict[str, Any] = {}
    titles = checkpoint_titles(runtime)
    with gr.Row(elem_id="modelmerger_page"):
        with gr.Column(variant="compact"):
            gr.HTML("<p>A merger of the two checkpoints will be generated in your "
                    "checkpoint directory.</p>")
            with gr.Row():
                for name in MODEL_FIELDS:
                    f[name] = gr.Dropdown(choices=titles, label=LABELS[name], value=None,
                                          elem_id=f"modelmerger_{name}")
                refresh = tool_button(REFRESH_SYMBOL, elem_id="modelmerger_refresh")
            _options(runtime, f)
            merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
        with gr.Column():
            result = gr.HTML(elem_id="modelmerger_result")
    tab = MergerTab(fields=f, refresh=refresh, merge=merge, result=result)
    _wire(runtime, tab, checkpoint_dropdown)
    return tab


def _options(runtime, f: dict[str, Any]) -> None:
    f["custom_name"] = gr.Textbox(label=LABELS["custom_name"], elem_id="modelmerger_custom_name")
    f["multiplier"] = gr.Slider(0.0, 1.0, step=0.05, value=0.3, label=LABELS["multiplier"],
                                elem_id="modelmerger_interp_amount")
    f["interp_method"] = gr.Radio(list(INTERP_METHODS), value="Weighted sum",
                                  label=LABELS["interp_method"],
                                  elem_id="modelmerger_interp_method")
    with gr.Row():
        f["checkpoint_format"] = gr.Radio(list(CHECKPOINT_FORMATS), value="safetensors",
                                          label=LABELS["checkpoint_format"],
                                          elem_id="modelmerger_checkpoint_format")
        f["save_as_half"] = gr.Checkbox(value=False, label=LABELS["save_as_half"],
                                        elem_id="modelmerger_save_as_half")
    f["config_source"] = gr.Radio(list(CONFIG_SOURCES), value=CONFIG_SOURCES[0],
                                  label=LABELS["config_source"],
                                  elem_id="modelmerger_config_method")
    with gr.Row():
        f["bake_in_vae"] = gr.Dropdown(choices=vae_choices(runtime), value="None",
                                       label=LABELS["bake_in_vae"],
                                       elem_id="modelmerger_bake_in_vae")
    f["discard_weights"] = gr.Textbox(label=LABELS["discard_weights"],
                                      elem_id="modelmerger_discard_weights")
    with gr.Accordion("Metadata", open=False):
        with gr.Row():
            for name in ("save_metadata", "add_merge_recipe", "copy_metadata_fields"):
                f[name] = gr.Checkbox(value=True, label=LABELS[name], elem_id=f"modelmerger_{name}")
        f["metadata_json"] = gr.Code(value="{}", language="json", label=LABELS["metadata_json"],
                                     elem_id="modelmerger_metadata_json")


def _wire(runtime, tab: MergerTab, checkpoint_dropdown: gr.Dropdown | None) -> None:
    models = [tab.fields[name] for name in MODEL_FIELDS]
    outputs = [*models, tab.fields["bake_in_vae"]]
    tab.refresh.click(lambda: refreshed_lists(runtime), None, outputs, queue=False)
    def run(*values, progress=gr.Progress()):
        return merge(runtime, dict(zip(FIELD_ORDER, values)), progress)

    event = tab.merge.click(run, [tab.fields[name] for name in FIELD_ORDER], tab.result,
                            concurrency_limit=1)
    event = event.success(lambda: refreshed_lists(runtime), None, outputs, queue=False)
    if checkpoint_dropdown is not None:
        event.then(lambda: gr.Dropdown(choices=checkpoint_titles(runtime)), None,
                   checkpoint_dropdown, queue=False)


def refreshed_lists(runtime) -> list:
    titles = checkpoint_titles(runtime)
    return [gr.Dropdown(choices=titles)] * 3 + [gr.Dropdown(choices=vae_choices(runtime))]


def params_from_values(values: dict[str, Any]) -> MergeParams:
    """Widget values -> `MergeParams` (an empty dropdown is an empty name)."""
    values = dict(values)
    for name in MODEL_FIELDS:
        values[name] = values.get(name) or ""
    values["bake_in_vae"] = values.get("bake_in_vae") or "None"
    values["metadata_json"] = values.get("metadata_json") or ""
    values["multiplier"] = float(values["multiplier"])
    return MergeParams(**values)


def merge(runtime, values: dict[str, Any], progress=None) -> str:
    """Run the merge; errors name the widget (or the file); the result names the new file."""
    report = (lambda done, total: progress(done / total, desc="Merging")) if progress else None
    try:
        result = run_merge(runtime, params_from_values(values), progress=report)
    except ParamsError as error:
        raise gr.Error(f"{LABELS.get(error.field, error.field)}: {error.reason}") from error
    except ModelLoadError as error:  # an input file that cannot be read
        raise gr.Error(without_paths(str(error))) from error
    return f"<p>{html.escape(result.message)}</p><p>{html.escape(result.info.title)}</p>"
