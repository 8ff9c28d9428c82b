"""In headless Chromium: a page opened while the first checkpoint loads shows its name and
native size once the load ends, without a reload (docs/security.md)."""

from __future__ import annotations

import threading

import pytest

from tests.helpers.browser import opened_ui, screenshot
from tests.helpers.webui_runtime import make_runtime

pytestmark = pytest.mark.browser


def test_page_opened_during_the_load_takes_the_model_when_it_ends(tmp_path):
    runtime = make_runtime(tmp_path, load=False)
    try:
        with opened_ui(runtime) as page:
            width = page.locator("#txt2img_width input[type=number]").first
            assert width.input_value() == "512"  # the model is still loading
            checkpoint = page.locator("#setting_sd_model_checkpoint input").first
            assert "tiny" not in checkpoint.input_value()

            def load() -> None:
                runtime.models.load_initial()
                runtime.ready.set()

            loader = threading.Thread(target=load)
            loader.start()
            loader.join()
            wait_for_value(page, "#setting_sd_model_checkpoint input", "tiny")
            for tab in ("txt2img", "img2img"):
                page.get_by_role("tab", name=tab).first.click()  # Gradio renders tabs lazily
                for side in ("width", "height"):
                    wait_for_value(page, f"#{tab}_{side} input[type=number]", "64")
            screenshot(page, "startup_model_picked_up")
    finally:
        runtime.jobs.stop()


def wait_for_value(page, selector: str, start: str) -> None:
    """Wait until the input at `selector` exists and its value starts with `start`."""
    page.wait_for_function(
        "([selector, start]) => { const box = document.querySelector(selector);"
        " return box !== null && box.value.startsWith(start); }",
        arg=[selector, start], timeout=20_000)
