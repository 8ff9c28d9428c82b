"""The UI driven in headless Chromium: generate, paste through PNG Info, interrupt.

A tiny random checkpoint is served by uvicorn on a loopback port; Playwright types
and clicks as a person would and reads what the page shows. Screenshots go to
test-artifacts/.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image, PngImagePlugin

from tests.helpers.browser import open_tab, screenshot, served_tiny_ui, set_number

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_tiny_ui(tmp_path_factory.mktemp("data")) as served:
        yield served



def test_generate_shows_image_and_infotext(served):
    runtime, page = served
    open_tab(page, "txt2img")
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    page.locator("#txt2img_negative_prompt textarea").fill("blue")
    set_number(page, "txt2img_steps", 3)
    set_number(page, "txt2img_width", 64)
    set_number(page, "txt2img_height", 64)
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt_token_counter').innerText.trim() == '3/75'")
    page.locator("#txt2img_prompt textarea").press("Control+Enter")  # A1111's shortcut
    page.locator("#txt2img_gallery img").first.wait_for()
    info = page.locator("#txt2img_infotext")
    info.get_by_text("Steps: ").wait_for()
    text = info.inner_text()
    assert "a red circle" in text and "Negative prompt: blue" in text
    assert "Steps: 3" in text and "Size: 64x64" in text
    screenshot(page, "txt2img_generate")


def _png_with_infotext(path, text: str):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, pnginfo=info)
    return path


def test_png_info_sends_parameters_to_txt2img(served, tmp_path):
    runtime, page = served
    text = ("a blue square\nNegative prompt: fog\nSteps: 11, Sampler: Euler a, "
            "Schedule type: Karras, CFG scale: 5.5, Seed: 4242, Size: 96x128")
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(
        str(_png_with_infotext(tmp_path / "in.png", text)))
    page.wait_for_function(
        "document.querySelector('#pnginfo_parameters textarea').value.includes('Steps: 11')")
    screenshot(page, "pnginfo_loaded")
    page.locator("#pnginfo_send_to_txt2img").click()
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.wait_for(state="visible")
    page.wait_for_function(
        "document.querySelector('#txt2img_prompt textarea').value == 'a blue square'")
    assert page.locator("#txt2img_negative_prompt textarea").input_value() == "fog"
    assert page.locator("#txt2img_steps input[type=number]").input_value() == "11"
    assert page.locator("#txt2img_seed input").input_value() == "4242"
    assert page.locator("#txt2img_width input[type=number]").input_value() == "96"
    assert page.locator("#txt2img_height input[type=number]").input_value() == "128"
    assert page.locator("#txt2img_cfg_scale input[type=number]").input_value() == "5.5"
    assert "Euler a" in page.locator("#txt2img_sampling input").input_value()
    assert "Karras" in page.locator("#txt2img_scheduler input").input_value()
    screenshot(page, "pnginfo_sent_to_txt2img")


def test_interrupt_ends_generation_early(served):
    runtime, page = served
    open_tab(page, "txt2img")
    page.locator("#txt2img_prompt textarea").fill("a long job")
    for elem_id, value in (("txt2img_steps", 150), ("txt2img_batch_count", 3),
                           ("txt2img_width", 64), ("txt2img_height", 64)):
        set_number(page, elem_id, value)
    saved_before = _saved_images(runtime)
    started = time.monotonic()
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_progress").get_by_text("Step ").wait_for()
    screenshot(page, "txt2img_running")
    page.locator("#txt2img_interrupt").click()
    page.locator("#txt2img_generate").wait_for(state="visible")
    elapsed = time.monotonic() - started
    page.locator("#txt2img_gallery img").first.wait_for()
    assert "a long job" in page.locator("#txt2img_infotext").inner_text()
    screenshot(page, "txt2img_interrupted")
    assert runtime.jobs.current is None
    # Three batches of 150 steps were asked for; the interrupt ended the job in the first.
    assert len(_saved_images(runtime) - saved_before) == 1
    assert elapsed < 60, f"interrupted job still took {elapsed:.0f} s"


def _saved_images(runtime) -> set:
    folder = runtime.paths.output_dir(runtime.settings.current.outdir_txt2img_samples)
    return set(folder.rglob("*.png"))


def test_bad_field_shows_an_error_naming_it(served):
    runtime, page = served
    open_tab(page, "txt2img")
    set_number(page, "txt2img_width", 68)
    page.locator("#txt2img_generate").click()
    # Shown in the result panel until the next run (tests/test_browser_form_errors.py).
    error = page.locator("#txt2img_results .easel-error",
                         has_text="Width: 68 is not a multiple of 8")
    error.first.wait_for()
    screenshot(page, "txt2img_error", full_page=False)
    page.locator("#txt2img_generate").wait_for(state="visible")
    set_number(page, "txt2img_width", 64)
