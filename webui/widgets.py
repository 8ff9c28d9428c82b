"""Small Gradio building blocks shared by the tabs: tool buttons and the top bar.

The top bar holds what A1111 users look for first: the "Stable Diffusion checkpoint"
dropdown with its refresh button, and the quick settings (SD VAE, Forge's "VAE / Text
Encoder" multi-select of separate SD3 / Flux parts, Clip skip). Changing
either goes through the backend (`runtime.models`, `runtime.settings.update`); this
file only builds widgets and turns their values into those calls.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.errors import without_paths
from modules.models.errors import ModelLoadError
from modules.settings import Settings, SettingsError

REFRESH_SYMBOL = "\U0001f504"  # 🔄
MODULES = "forge_additional_modules"
QUICK_SETTINGS = ("sd_vae", MODULES, "CLIP_stop_at_last_layers")
# Settings whose `setting_<name>` id the top bar already uses (as A1111's checkpoint box):
# their widget on the Settings tab gets another id, so no two elements share one.
TOP_BAR_SETTING_IDS = frozenset({"sd_model_checkpoint"})


def tool_button(symbol: str, *, elem_id: str | None = None, visible: bool = True) -> gr.Button:
    """A square emoji button, as A1111 puts beside fields (🎲, ♻️, ↙️, ⇅ ...)."""
    return gr.Button(symbol, elem_id=elem_id, elem_classes=["tool"], size="sm",
                     min_width=40, scale=0, variant="secondary", visible=visible)


def vae_choices(runtime) -> list[str]:
    """The `sd_vae` values: Automatic, None (the checkpoint's own) and the VAE files."""
    from modules.models.vae_select import AUTOMATIC, NONE, list_vaes

    paths = runtime.paths
    return [AUTOMATIC, NONE, *(p.name for p in list_vaes(paths.vae_dir, paths.checkpoint_dirs))]


def module_choices(runtime, selected=()) -> list[str]:
    """"VAE / Text Encoder": the part files of the text-encoder and VAE folders (as
    `/sdapi/v1/sd-modules` lists them), then any other name the setting holds."""
    from modules.models.flow_parts import list_parts, module_folders

    names = [part.path.name for part in list_parts(module_folders(runtime.paths))]
    return names + [name for name in selected if name not in names]


def quick_widget(runtime, name: str, value) -> gr.components.Component:
    """A top-bar setting; the VAE is a dropdown of what exists (a file name is allowed too)."""
    if name == MODULES:  # shown always, as Forge does
        return gr.Dropdown(choices=module_choices(runtime, value), value=list(value),
                           multiselect=True, label="VAE / Text Encoder", scale=0,
                           elem_id=f"quick_{MODULES}", min_width=320)
    if name == "sd_vae":
        return gr.Dropdown(choices=vae_choices(runtime), value=value, label="SD VAE",
                           elem_id="quick_sd_vae", allow_custom_value=True, scale=0,
                           min_width=220)
    return setting_widget(name, value, elem_id=f"quick_{name}")


def setting_widget(name: str, value, *, elem_id: str | None = None) -> gr.components.Component:
    """The widget for one setting, chosen from its declared type and metadata."""
    spec = Settings.__dataclass_fields__[name]
    meta = spec.metadata
    kind = spec.type if isinstance(spec.type, str) else spec.type.__name__
    common = dict(label=meta["label"], value=value, elem_id=elem_id or default_setting_id(name))
    if kind == "bool":
        return gr.Checkbox(**common)
    if kind == "tuple" and meta.get("choices"):  # a list from fixed names
        return gr.Dropdown(choices=list(meta["choices"]), multiselect=True,
                           **{**common, "value": list(value)})
    if kind == "tuple":  # a list of file names (forge_additional_modules)
        return gr.Dropdown(choices=list(value), multiselect=True, allow_custom_value=True,
                           **{**common, "value": list(value)})
    if meta.get("choices"):
        return gr.Dropdown(choices=list(meta["choices"]), **common)
    if kind in ("int", "float"):
        low, high = meta.get("minimum"), meta.get("maximum")
        if low is not None and high is not None:
            step = 1 if kind == "int" else _float_step(low, high)
            return gr.Slider(minimum=low, maximum=high, step=step, **common)
        return gr.Number(precision=0 if kind == "int" else None, **common)
    return gr.Textbox(**common)


def default_setting_id(name: str) -> str:
    """The Settings tab's id for a setting: `setting_<name>`, unless the top bar has it."""
    return f"settings_tab_{name}" if name in TOP_BAR_SETTING_IDS else f"setting_{name}"


def _float_step(low: float, high: float) -> float:
    span = high - low
    return 0.01 if span <= 2 else 0.1 if span <= 20 else 1.0


@dataclass
class TopBar:
    """The widgets above the tabs."""

    checkpoint: gr.Dropdown
    refresh: gr.Button
    quick: dict[str, gr.components.Component]


def checkpoint_titles(runtime) -> list[str]:
    return [info.title for info in runtime.models.checkpoints()]


def loaded_model(runtime):
    """The default model once the first load ended, else None (never waits for a load)."""
    return runtime.models.current if runtime.ready.is_set() else None


def current_checkpoint_title(runtime) -> str | None:
    loaded = loaded_model(runtime)
    return loaded.info.title if loaded is not None else None


def build_top_bar(runtime) -> TopBar:
    settings = runtime.settings.current
    with gr.Row(elem_id="quicksettings", equal_height=True):
        checkpoint = gr.Dropdown(
            label="Stable Diffusion checkpoint", choices=checkpoint_titles(runtime),
            value=current_checkpoint_title(runtime), elem_id="setting_sd_model_checkpoint",
            scale=0, min_width=360, allow_custom_value=True)
        refresh = tool_button(REFRESH_SYMBOL, elem_id="refresh_sd_model_checkpoint")
        quick = {name: quick_widget(runtime, name, getattr(settings, name))
                 for name in QUICK_SETTINGS}
    return TopBar(checkpoint=checkpoint, refresh=refresh, quick=quick)


def refresh_checkpoints(runtime) -> dict:
    """New choices for the checkpoint dropdown (files may have been added)."""
    return gr.update(choices=checkpoint_titles(runtime), value=current_checkpoint_title(runtime))


def select_checkpoint(runtime, title: str) -> dict:
    """Load the chosen checkpoint, make it the default, remember it in the settings."""
    if not title:
        return gr.update(value=current_checkpoint_title(runtime))
    try:
        runtime.ready.wait()
        loaded = runtime.models.select(runtime.models.find(title))
    except ModelLoadError as error:
        raise gr.Error(f"Stable Diffusion checkpoint: {without_paths(str(error))}") from error
    _save_setting(runtime, "sd_model_checkpoint", loaded.info.title)
    return gr.update(choices=checkpoint_titles(runtime), value=loaded.info.title)


def apply_quick_setting(runtime, name: str, value):
    """Save one quick setting; a refused value is shown naming the setting."""
    _save_setting(runtime, name, value)
    return shown(getattr(runtime.settings.current, name))


def shown(value):
    """A setting's value as its widget shows it (a list setting is saved as a tuple)."""
    return list(value) if isinstance(value, tuple) else value


def quick_values(runtime) -> list:
    """The quick settings' current values, in `QUICK_SETTINGS` order."""
    return [shown(getattr(runtime.settings.current, name)) for name in QUICK_SETTINGS]


def _save_setting(runtime, name: str, value) -> None:
    try:
        # Names inside the model folders, checked as the API's /options checks them.
        from modules.api.generation import check_module_names, check_vae_name

        if name == MODULES:
            check_module_names(runtime, value)
        elif name == "sd_vae":
            check_vae_name(runtime, value)
        runtime.settings.update({name: value}, origin="ui")
    except (SettingsError, PermissionError) as error:
        label = Settings.describe(name)["label"]
        raise gr.Error(f"{label}: {error}") from error
