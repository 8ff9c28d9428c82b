"""Settings in headless Chromium: change one, apply, restart the app, find it kept."""

from __future__ import annotations

import json

import pytest

from tests.helpers.browser import browser_page, screenshot, serve
from tests.helpers.webui_runtime import make_runtime
from webui.app import create_app

pytestmark = pytest.mark.browser
TIMEOUT_MS = 60_000
QUALITY = "#setting_jpeg_quality input[type=number]"


def open_settings(page, url: str) -> None:
    page.goto(url)
    page.get_by_role("tab", name="Settings").click()
    page.locator("#settings_search textarea, #settings_search input").first.wait_for()


def test_setting_survives_a_restart(tmp_path):
    first = make_runtime(tmp_path, load=False)
    first.ready.set()
    with browser_page() as page:
        page.set_default_timeout(TIMEOUT_MS)
        with serve(create_app(first)) as url:
            open_settings(page, url)
            page.locator("#settings_search textarea, #settings_search input").first.fill("jpeg")
            page.locator("#setting_samples_format").wait_for(state="hidden")
            box = page.locator(QUALITY)
            box.fill("55")
            box.press("Tab")
            page.locator("#settings_submit").click()
            page.locator("#settings_result").get_by_text("1 settings changed").wait_for()
            screenshot(page, "settings_applied")
        assert json.loads(first.paths.config_file.read_text())["jpeg_quality"] == 55

        second = make_runtime(tmp_path, load=False)  # a new process would build this
        second.ready.set()
        with serve(create_app(second)) as url:
            open_settings(page, url)
            page.wait_for_function(
                f"document.querySelector('{QUALITY}').value == '55'")
            screenshot(page, "settings_after_restart")
