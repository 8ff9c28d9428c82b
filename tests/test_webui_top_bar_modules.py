"""Forge's top-bar "VAE / Text Encoder" multi-select: the part files of the text-encoder and
VAE folders, bound to the `forge_additional_modules` setting through the settings store."""

from __future__ import annotations

import json

import gradio as gr
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers.flow_files import random_parts, write_separate
from tests.helpers.webui_runtime import make_runtime
from webui import widgets


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("top-bar-data")
    write_separate(data / "models" / "Stable-diffusion" / "flux.safetensors", data / "models",
                   random_parts("flux"))
    save_file({"x": torch.zeros(2)}, str(data / "models" / "VAE" / "notes.safetensors"))
    rt = make_runtime(data, load=False)
    yield rt
    rt.jobs.stop()


def test_lists_the_part_files_of_the_folders(runtime):
    choices = widgets.module_choices(runtime)
    assert sorted(choices) == ["ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors"]
    assert widgets.module_choices(runtime, ("gone.safetensors",))[-1] == "gone.safetensors"


def test_shown_always_as_a_multi_select(runtime):
    with gr.Blocks():
        top = widgets.build_top_bar(runtime)
    modules = top.quick[widgets.MODULES]
    assert list(top.quick) == ["sd_vae", "forge_additional_modules", "CLIP_stop_at_last_layers"]
    assert modules.multiselect and modules.visible and modules.label == "VAE / Text Encoder"
    assert modules.elem_id == "quick_forge_additional_modules" and modules.value == []
    assert sorted(c[0] for c in modules.choices) == sorted(widgets.module_choices(runtime))


def test_selecting_saves_the_setting_through_the_store(runtime):
    chosen = ["ae.safetensors", "t5xxl_fp16.safetensors"]
    try:
        assert widgets.apply_quick_setting(runtime, widgets.MODULES, chosen) == chosen
        assert runtime.settings.current.forge_additional_modules == tuple(chosen)
        saved = json.loads(runtime.paths.config_file.read_text())
        assert saved["forge_additional_modules"] == chosen
        assert widgets.quick_values(runtime)[1] == chosen
        with pytest.raises(gr.Error, match="VAE / Text Encoder"):
            widgets.apply_quick_setting(runtime, widgets.MODULES, ["missing.safetensors"])
        assert runtime.settings.current.forge_additional_modules == tuple(chosen)
    finally:
        widgets.apply_quick_setting(runtime, widgets.MODULES, [])
    assert runtime.settings.current.forge_additional_modules == ()


def test_the_vae_quick_setting_takes_only_listed_vaes(runtime):
    """As /options does: a typed path is refused before it is stored (issue #17 item 7)."""
    before = runtime.settings.current.sd_vae
    with pytest.raises(gr.Error, match="SD VAE"):
        widgets.apply_quick_setting(runtime, "sd_vae", "../../../etc/passwd")
    assert runtime.settings.current.sd_vae == before
