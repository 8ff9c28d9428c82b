"""The generation panel shared by txt2img and img2img, laid out as A1111 users know it.

Prompts with token counters, styles and the Generate / Interrupt / Skip buttons on top;
generation settings on the left (sampler, schedule type, steps, size with ⇅, batch,
CFG, seed with 🎲/♻️ and the "Extra" variation row, Tiling, hires fix, refiner, scripts); the
gallery with its buttons, progress bar and generation info on the right
(`webui.panel_results`). Each tab composes these builders in its own order (img2img
puts its pictures first and the size under "Resize to") and adds its own handler;
every id is `<tab>_<part>`, as A1111's, so scripts and tests find the same elements.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from modules.pipeline.flow_plan import has_distilled_guidance
from modules.pipeline.params import LATENT_UPSCALE_MODES
from modules.sampling import registry
from webui import fields as F
from webui.extra_networks import NetworksUI, build_networks
from webui.panel_results import ResultsUI
from webui.script_ui import ScriptsUI
from webui.styles_ui import StylesUI, build_styles
from webui.widgets import checkpoint_titles, loaded_model, tool_button

RANDOM_SYMBOL, REUSE_SYMBOL = "\U0001f3b2", "\u267b\ufe0f"  # 🎲 ♻️
PASTE_SYMBOL, SWAP_SYMBOL = "\u2199\ufe0f", "\u21c5"  # ↙️ ⇅
CLEAR_SYMBOL, NETWORKS_SYMBOL = "\U0001f5d1\ufe0f", "\U0001f3b4"  # 🗑️ 🎴
HIRES_MIN = 180  # px: a hires field narrower than this goes to its own line


@dataclass
class GenerationPanel:
    """One tab's generation widgets; `fields` maps request field names to widgets."""

    prefix: str
    names: tuple[str, ...]  # the request fields of this tab, in handler order
    fields: dict[str, Any]
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    clear: gr.Button
    networks_button: gr.Button
    token_counters: dict[str, gr.HTML]
    results_ui: ResultsUI
    styles: StylesUI
    networks: NetworksUI
    scripts: ScriptsUI | None = None
    tools: dict[str, gr.Button] = field(default_factory=dict)  # 🎲 / ♻️ beside the seeds
    seed_extra_rows: list[Any] = field(default_factory=list)  # shown by "Extra"
    toggles: list[tuple[Any, Any]] = field(default_factory=list)  # (checkbox, group it shows)

    def field_widgets(self) -> list[Any]:
        return [self.fields[name] for name in self.names]

    def paste_widgets(self) -> list[Any]:
        """What pasting an infotext sets: the fields, then the always-on scripts'
        widgets (`webui.panel_wiring.paste_updates` gives one update for each)."""
        alwayson = self.scripts.alwayson_widgets() if self.scripts is not None else []
        return [*self.field_widgets(), *alwayson]

    # The results widgets under their old names (the txt2img tests and app.py use them).
    @property
    def gallery(self) -> gr.Gallery:
        return self.results_ui.gallery

    @property
    def infotext(self) -> gr.HTML:
        return self.results_ui.infotext

    @property
    def progress(self) -> gr.HTML:
        return self.results_ui.progress

    @property
    def results(self) -> gr.State:
        return self.results_ui.results


def native_size(runtime) -> int:
    loaded = loaded_model(runtime)
    return loaded.family.native_resolution if loaded is not None else 512


# ---------------------------------------------------------------- top row


def build_prompt_row(runtime, prefix: str, w: dict[str, Any]) -> dict[str, Any]:
    """Prompts, counters, action buttons, styles and the extra-networks cards."""
    counters: dict[str, gr.HTML] = {}
    with gr.Row(elem_id=f"{prefix}_toprow"):
        with gr.Column(scale=6, elem_id=f"{prefix}_prompts"):
            for name, placeholder in (("prompt", "Prompt (press Ctrl+Enter to generate, "
                                                 "Ctrl+Up/Down to change emphasis)"),
                                      ("negative_prompt", "Negative prompt")):
                with gr.Column(elem_classes=["prompt-box"]):
                    counters[name] = gr.HTML("0/75", elem_id=f"{prefix}_{name}_token_counter",
                                             elem_classes=["token-counter"])
                    w[name] = gr.Textbox(label=F.label_for(name), show_label=False,
                                         lines=3, max_lines=12, placeholder=placeholder,
                                         elem_id=f"{prefix}_{name}",
                                         elem_classes=["prompt"])
        with gr.Column(scale=2, min_width=220, elem_id=f"{prefix}_actions"):
            buttons = _action_buttons(prefix)
            styles = build_styles(runtime, prefix, w)
    networks = build_networks(prefix)
    return dict(token_counters=counters, styles=styles, networks=networks, **buttons)


def _action_buttons(prefix: str) -> dict[str, gr.Button]:
    generate = gr.Button("Generate", variant="primary", elem_id=f"{prefix}_generate",
                         elem_classes=["generate-button"], size="lg")
    with gr.Row():
        interrupt = gr.Button("Interrupt", elem_id=f"{prefix}_interrupt", visible=False,
                              elem_classes=["interrupt-button"])
        skip = gr.Button("Skip", elem_id=f"{prefix}_skip", visible=False)
    with gr.Row(elem_classes=["tool-row"]):
        paste = tool_button(PASTE_SYMBOL, elem_id=f"{prefix}_paste")
        clear = tool_button(CLEAR_SYMBOL, elem_id=f"{prefix}_clear_prompt")
        networks = tool_button(NETWORKS_SYMBOL, elem_id=f"{prefix}_extra_networks")
    return dict(generate=generate, interrupt=interrupt, skip=skip, paste=paste, clear=clear,
                networks_button=networks)


# ---------------------------------------------------------------- settings column


def build_sampler(prefix: str, w: dict[str, Any]) -> None:
    with gr.Row():
        w["sampler_name"] = gr.Dropdown([s.label for s in registry.SAMPLERS], value="DPM++ 2M",
                                        label="Sampling method", elem_id=f"{prefix}_sampling")
        w["scheduler"] = gr.Dropdown([s.label for s in registry.SCHEDULERS], value="Automatic",
                                     label="Schedule type", elem_id=f"{prefix}_scheduler")
    w["steps"] = gr.Slider(1, 150, value=20, step=1, label="Sampling steps",
                           elem_id=f"{prefix}_steps")


def build_size_and_batch(prefix: str, w: dict[str, Any], size: int) -> None:
    """Width/height with ⇅ beside them, batch count and size to the right."""
    with gr.Row():
        with gr.Column(scale=4, min_width=160):
            w["width"] = gr.Slider(64, 2048, value=size, step=8, label="Width",
                                   elem_id=f"{prefix}_width")
            w["height"] = gr.Slider(64, 2048, value=size, step=8, label="Height",
                                    elem_id=f"{prefix}_height")
        swap = tool_button(SWAP_SYMBOL, elem_id=f"{prefix}_res_switch_btn")
        with gr.Column(scale=3, min_width=160):
            w["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count",
                                    elem_id=f"{prefix}_batch_count")
            w["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size",
                                        elem_id=f"{prefix}_batch_size")
    swap.click(lambda a, b: (b, a), [w["width"], w["height"]], [w["width"], w["height"]],
               queue=False, show_progress="hidden")


def build_cfg(prefix: str, w: dict[str, Any], runtime=None) -> None:
    w["cfg_scale"] = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale",
                               elem_id=f"{prefix}_cfg_scale")
    # Forge's slider for Flux.1 dev's guidance input; shown only while such a model is loaded.
    w["distilled_cfg_scale"] = gr.Slider(0, 30, value=3.5, step=0.1, label="Distilled CFG Scale",
                                         elem_id=f"{prefix}_distilled_cfg_scale",
                                         visible=shows_distilled_cfg(runtime))


def shows_distilled_cfg(runtime) -> bool:
    """Whether the loaded model takes a distilled guidance value (Flux.1 dev)."""
    loaded = loaded_model(runtime) if runtime is not None else None
    return loaded is not None and has_distilled_guidance(loaded.family)


def build_seed_rows(prefix: str, w: dict[str, Any], tools: dict[str, gr.Button]) -> list[Any]:
    """Seed with 🎲/♻️ and "Extra"; the variation and resize-seed rows it reveals."""
    with gr.Row(elem_id=f"{prefix}_seed_row", equal_height=True):
        w["seed"] = gr.Number(label="Seed", value=-1, precision=0, elem_id=f"{prefix}_seed",
                              scale=4)
        tools["random_seed"] = tool_button(RANDOM_SYMBOL, elem_id=f"{prefix}_random_seed")
        tools["reuse_seed"] = tool_button(REUSE_SYMBOL, elem_id=f"{prefix}_reuse_seed")
        w["seed_extras"] = gr.Checkbox(label="Extra", value=False,
                                       elem_id=f"{prefix}_subseed_show", scale=1, min_width=80)
    with gr.Row(visible=False, elem_id=f"{prefix}_subseed_row") as variation:
        w["subseed"] = gr.Number(label="Variation seed", value=-1, precision=0,
                                 elem_id=f"{prefix}_subseed", scale=4)
        tools["random_subseed"] = tool_button(RANDOM_SYMBOL, elem_id=f"{prefix}_random_subseed")
        tools["reuse_subseed"] = tool_button(REUSE_SYMBOL, elem_id=f"{prefix}_reuse_subseed")
        w["subseed_strength"] = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                          elem_id=f"{prefix}_subseed_strength", scale=4)
    with gr.Row(visible=False, elem_id=f"{prefix}_seed_resize_row") as resize:
        w["seed_resize_from_w"] = gr.Slider(0, 2048, value=0, step=8,
                                            label="Resize seed from width",
                                            elem_id=f"{prefix}_seed_resize_from_w")
        w["seed_resize_from_h"] = gr.Slider(0, 2048, value=0, step=8,
                                            label="Resize seed from height",
                                            elem_id=f"{prefix}_seed_resize_from_h")
    return [variation, resize]


def build_hires(runtime, prefix: str, w: dict[str, Any]) -> tuple[Any, Any]:
    """The "Hires. fix" checkbox and the options it shows (A1111's defaults)."""
    from modules.upscaling.registry import upscalers_of  # lists the ESRGAN folder only

    upscalers = [*LATENT_UPSCALE_MODES, *upscalers_of(runtime).names()]
    w["enable_hr"] = gr.Checkbox(label="Hires. fix", value=False, elem_id=f"{prefix}_enable_hr")
    with gr.Group(visible=False, elem_id=f"{prefix}_hires_fix") as group:
        # Two fields a row (one on a phone), so no label or value is cut short.
        with gr.Row():
            w["hr_upscaler"] = gr.Dropdown(upscalers, value="Latent", label="Upscaler",
                                           elem_id=f"{prefix}_hr_upscaler", min_width=HIRES_MIN)
            w["hr_scale"] = gr.Slider(1, 4, value=2.0, step=0.05, label="Upscale by",
                                      elem_id=f"{prefix}_hr_scale", min_width=HIRES_MIN)
        with gr.Row():
            w["hr_second_pass_steps"] = gr.Slider(0, 150, value=0, step=1, label="Hires steps",
                                                  elem_id=f"{prefix}_hires_steps",
                                                  min_width=HIRES_MIN)
            w["denoising_strength"] = gr.Slider(0, 1, value=0.7, step=0.01,
                                                label="Denoising strength",
                                                elem_id=f"{prefix}_denoising_strength",
                                                min_width=HIRES_MIN)
        with gr.Row():
            w["hr_resize_x"] = gr.Slider(0, 2048, value=0, step=8, label="Resize width to",
                                         elem_id=f"{prefix}_hr_resize_x", min_width=HIRES_MIN)
            w["hr_resize_y"] = gr.Slider(0, 2048, value=0, step=8, label="Resize height to",
                                         elem_id=f"{prefix}_hr_resize_y", min_width=HIRES_MIN)
        w["hr_distilled_cfg"] = gr.Slider(0, 30, value=3.5, step=0.1,
                                          label="Hires Distilled CFG Scale",
                                          elem_id=f"{prefix}_hr_distilled_cfg",
                                          visible=shows_distilled_cfg(runtime))
        _hires_names(runtime, prefix, w)
    return w["enable_hr"], group


def _hires_names(runtime, prefix: str, w: dict[str, Any]) -> None:
    w["hr_checkpoint_name"] = gr.Dropdown(
        [F.SAME_CHECKPOINT, *checkpoint_titles(runtime)], value=F.SAME_CHECKPOINT,
        label="Hires checkpoint", elem_id=f"{prefix}_hr_checkpoint", allow_custom_value=True)
    with gr.Row():
        w["hr_sampler_name"] = gr.Dropdown(
            [F.SAME_SAMPLER, *[s.label for s in registry.SAMPLERS]], value=F.SAME_SAMPLER,
            label="Hires sampling method", elem_id=f"{prefix}_hr_sampler", min_width=HIRES_MIN)
        w["hr_scheduler"] = gr.Dropdown(
            [F.SAME_SCHEDULER, *[s.label for s in registry.SCHEDULERS]], value=F.SAME_SCHEDULER,
            label="Hires schedule type", elem_id=f"{prefix}_hr_scheduler", min_width=HIRES_MIN)
    with gr.Row():
        w["hr_prompt"] = gr.Textbox(label="Hires prompt", lines=2, placeholder=(
            "Prompt for hires fix pass.\nLeave empty to use the same prompt as in first pass."),
            elem_id=f"{prefix}_hires_prompt")
        w["hr_negative_prompt"] = gr.Textbox(label="Hires negative prompt", lines=2,
                                             placeholder="Leave empty to use the same negative "
                                                         "prompt as in first pass.",
                                             elem_id=f"{prefix}_hires_neg_prompt")


def build_refiner(runtime, prefix: str, w: dict[str, Any]) -> tuple[Any, Any]:
    """The "Refiner" checkbox and its checkpoint / switch-at options."""
    w["refiner_enabled"] = gr.Checkbox(label="Refiner", value=False,
                                       elem_id=f"{prefix}_enable_refiner")
    with gr.Row(visible=False, elem_id=f"{prefix}_refiner") as group:
        w["refiner_checkpoint"] = gr.Dropdown(
            [F.NO_REFINER, *checkpoint_titles(runtime)], value=F.NO_REFINER, label="Checkpoint",
            elem_id=f"{prefix}_checkpoint", allow_custom_value=True)
        w["refiner_switch_at"] = gr.Slider(0.01, 1.0, value=0.8, step=0.01, label="Switch at",
                                           elem_id=f"{prefix}_switch_at")
    return w["refiner_enabled"], group


def build_tiling(prefix: str, w: dict[str, Any]) -> None:
    """A1111's "Tiling" checkbox: the picture wraps around (seamless textures)."""
    w["tiling"] = gr.Checkbox(label="Tiling", value=False, elem_id=f"{prefix}_tiling")


def build_hidden_fields(prefix: str, w: dict[str, Any]) -> None:
    """Override settings: shown only when a pasted infotext brought some."""
    w["override_settings"] = gr.Dropdown([], value=[], multiselect=True, visible=False,
                                         label="Override settings",
                                         elem_id=f"{prefix}_override_settings")
