"""The whole-app auth rule in a real browser: Gradio's login page loads with only the
public allow-list open, and after logging in every request the page makes passes
(generating included: the queue, its event stream and the image file)."""

from __future__ import annotations

import pytest

from tests.helpers.browser import PAGE_TIMEOUT_MS, browser_page, screenshot, serve, set_number
from tests.helpers.webui_runtime import make_runtime

pytestmark = pytest.mark.browser


def test_login_page_then_the_ui_work_behind_whole_app_auth(tmp_path):
    from webui.app import create_app

    runtime = make_runtime(tmp_path, "--api", "--gradio-auth", "ann:pw1")
    refused: list[str] = []
    try:
        with serve(create_app(runtime)) as url, browser_page() as page:
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            page.on("response", lambda r: refused.append(r.url) if r.status == 401 else None)
            page.goto(url)
            page.get_by_label("username").fill("ann")
            page.get_by_label("password").fill("pw1")
            before_login = list(refused)
            page.get_by_role("button", name="Login").click()
            page.locator("#txt2img_prompt textarea").wait_for()
            page.locator("#txt2img_prompt textarea").fill("a red circle")
            for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64),
                                   ("txt2img_height", 64)):
                set_number(page, elem_id, value)
            page.locator("#txt2img_generate").click()  # the queue, its stream, the image file
            page.locator("#txt2img_gallery img").first.wait_for()
            screenshot(page, "security_login_then_ui")
            after_login = refused[len(before_login):]
    finally:
        runtime.jobs.stop()
    assert before_login == []  # the login page needs nothing outside the allow-list
    assert after_login == []  # and Gradio's session cookie opens everything the UI uses
