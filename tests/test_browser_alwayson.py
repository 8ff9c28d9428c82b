"""An always-on script's accordion in headless Chromium: open it, turn the script on,
move its slider, generate, find the script's infotext key with that value, then paste
the infotext back (↙️ with an empty prompt box) and see the widgets set again.

The "Test probe" extension (tests/test_alwayson_ui.py) is written into the served
app's `<data dir>/extensions/`; screenshots go to test-artifacts/.
"""

from __future__ import annotations

import pytest

from tests.helpers.browser import open_tab, screenshot, served_tiny_ui, set_number
from tests.test_alwayson_ui import write_probe_extension

pytestmark = pytest.mark.browser
ACCORDION = "txt2img_alwayson_test_probe"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = write_probe_extension(tmp_path_factory.mktemp("data"))
    with served_tiny_ui(data) as served:
        yield served


def slider_value(page) -> str:
    return page.locator(f"#{ACCORDION}_strength input[type=number]").first.input_value()


def test_accordion_value_reaches_the_infotext_and_pastes_back(served):
    _, page = served
    open_tab(page, "txt2img")
    accordion = page.locator(f"#{ACCORDION}")
    assert "Test probe" in accordion.inner_text()
    enabled = page.locator(f"#{ACCORDION}_enabled input[type=checkbox]")
    assert not enabled.is_visible()  # closed until opened, as A1111's accordions
    accordion.get_by_text("Test probe").first.click()
    enabled.check()
    set_number(page, f"{ACCORDION}_strength", 1.35)
    page.locator("#txt2img_prompt textarea").fill("a probed square")
    for name, value in (("steps", 2), ("width", 64), ("height", 64)):
        set_number(page, f"txt2img_{name}", value)
    page.locator("#txt2img_generate").click()
    infotext = page.locator("#txt2img_infotext")
    infotext.get_by_text("a probed square").first.wait_for()
    screenshot(page, "alwayson_generated")
    assert "Test key: 1.35" in infotext.inner_text()
    assert "Test enabled: True" in infotext.inner_text()

    enabled.uncheck()
    set_number(page, f"{ACCORDION}_strength", 0.2)
    assert slider_value(page) == "0.2"
    page.locator("#txt2img_prompt textarea").fill("")
    page.locator("#txt2img_paste").click()  # an empty prompt box pastes the last result
    page.wait_for_function(
        f"document.querySelector('#{ACCORDION}_strength input[type=number]').value === '1.35'")
    assert enabled.is_checked()
    assert page.locator("#txt2img_prompt textarea").input_value() == "a probed square"
    screenshot(page, "alwayson_pasted")
