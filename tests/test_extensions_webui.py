"""The Extensions tab and extension UI parts (webui side; no real git clone)."""

from __future__ import annotations

import json

import gradio as gr
import pytest

from modules.app.cmd_args import parse_args
from modules.extensions.install import (
    ACCESS_DENIED,
    ExtensionAccessError,
    extension_access_allowed,
    folder_name,
    install_from_url,
)
from tests.helpers.extensions import runtime_with
from webui.tabs import extensions as tab


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = runtime_with(tmp_path_factory.mktemp("extui"), ("sample_ext", "broken_import"),
                      "--listen")
    yield rt
    rt.jobs.stop()


def test_install_from_url_is_refused_when_not_local(runtime, tmp_path):
    assert not extension_access_allowed(runtime.args)
    assert tab.install(runtime, "https://example.com/a/b.git", "", "") == ACCESS_DENIED
    with pytest.raises(ExtensionAccessError, match="enable-insecure-extension-access"):
        install_from_url(runtime.args, tmp_path, "https://example.com/a/b.git")
    assert not any(tmp_path.iterdir())
    for flags in (["--share"], ["--server-name", "0.0.0.0"]):
        assert not extension_access_allowed(parse_args(flags))
    assert extension_access_allowed(parse_args([]))
    insecure = parse_args(["--listen", "--enable-insecure-extension-access",
                           "--gradio-auth", "u:p"])  # exposed: a login is needed too
    assert extension_access_allowed(insecure)
    with pytest.raises(ValueError, match="not a git URL"):
        install_from_url(insecure, tmp_path, "file:///etc")
    assert folder_name("https://github.com/x/sd-ext.git", None) == "sd-ext"
    with pytest.raises(ValueError, match="invalid extension folder name"):
        folder_name("https://github.com/x/y", "../evil")


def test_installed_list_enable_disable_and_errors(runtime):
    rows = {row[0]: row for row in tab.installed_rows(runtime)}
    assert rows["sample_ext"][1] is True and "at import on purpose" in rows["broken_import"][4]
    builtin = [name for name in rows if name not in ("sample_ext", "broken_import")]
    table, status = tab.apply_enabled(runtime, ["broken_import", *builtin])
    assert "Saved" in status
    assert json.loads(runtime.settings.current.disabled_extensions) == ["sample_ext"]
    assert {row[0]: row[1] for row in table}["sample_ext"] is False
    tab.apply_enabled(runtime, ["sample_ext", "broken_import", *builtin])
    assert json.loads(runtime.settings.current.disabled_extensions) == []


def test_ui_module_tab_assets_and_settings(runtime):
    tabs = tab.extension_tabs(runtime)
    assert [title for title, _ in tabs] == ["Sample"]
    with gr.Blocks():
        with gr.Tabs():
            with gr.Tab("Extensions"):
                tab.build(runtime)
            tab.build_extension_tabs(runtime)
    assert "window.sampleExtLoaded" in tab.page_head(runtime)
    assert ".sample-ext" in tab.page_css(runtime)
    assert "Not saved: sample_greeting" in tab.apply_options(runtime, ["sample_greeting"], 5)
    assert tab.apply_options(runtime, ["sample_greeting"], "hey") == "Extension settings saved."
    assert runtime.extensions.options.get("sample_greeting") == "hey"
