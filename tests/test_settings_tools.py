"""The built-in tools' settings (`modules/settings/tools.py`): A1111's names and defaults,
validated like every setting, after the core settings in order, shown in the Settings tab."""

from __future__ import annotations

import gradio as gr
import pytest

from modules.settings import Settings, SettingsError, validate
from webui.widgets import setting_widget


def test_tools_settings_have_a1111_names_defaults_and_come_after_the_core_ones():
    settings = Settings()
    names = Settings.names()
    assert names[0] == "samples_save"  # the core settings first (Settings tab order)
    assert names.index("hypertile_enable_unet") > names.index("disable_all_extensions")
    assert (settings.hypertile_max_tile_unet, settings.hypertile_max_tile_vae) == (256, 128)
    assert settings.interrogate_clip_min_length == 24
    assert settings.interrogate_deepbooru_score_threshold == 0.5
    assert settings.interrogate_clip_skip_categories == ()


def test_tools_settings_are_validated_and_overridable():
    assert validate("interrogate_clip_skip_categories", ["artists", "flavors"]) == (
        "artists", "flavors")
    with pytest.raises(SettingsError, match="'poets' is not one of"):
        validate("interrogate_clip_skip_categories", ["poets"])
    with pytest.raises(SettingsError, match="hypertile_max_tile_unet: 600 is above"):
        validate("hypertile_max_tile_unet", 600)
    changed = Settings().with_overrides({"hypertile_enable_unet": True,
                                         "deepbooru_sort_alpha": False})
    assert changed.hypertile_enable_unet and not changed.deepbooru_sort_alpha


def test_a_list_setting_with_fixed_names_is_a_multiselect_of_those_names():
    with gr.Blocks():
        widget = setting_widget("interrogate_clip_skip_categories", ())
    assert widget.multiselect
    assert [choice[0] for choice in widget.choices] == ["artists", "flavors", "mediums",
                                                       "movements"]
