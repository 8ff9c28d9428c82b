"""The ControlNet units in headless Chromium, with the demo model and its silhouette
ControlNet: open the accordion, upload a silhouette (white circle on black), pick the
preprocessor and model, preview the map (💥), generate 64x64 in 2 steps and find the
unit in the infotext, then paste it back; and an enabled unit without a model refused
before queueing, naming the unit. Screenshots go to test-artifacts/controlnet_*.png.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from modules.app.cmd_args import parse_args
from modules.runtime import Runtime
from tests.helpers.browser import open_tab, opened_ui, screenshot, set_number

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
CONTROLNET = ROOT / "models" / "ControlNet" / "easel-demo-silhouette.safetensors"
UNIT0 = "txt2img_controlnet_unit0"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    assert DEMO.is_file() and CONTROLNET.is_file(), "the demo model and its ControlNet ship"
    data = tmp_path_factory.mktemp("data")
    runtime = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent),
                                         "--controlnet-dir", str(CONTROLNET.parent)]))
    runtime.models.load_initial()
    runtime.ready.set()
    submitted = []
    submit = runtime.jobs.submit

    def counting_submit(task, *args, **kwargs):
        submitted.append(task)
        return submit(task, *args, **kwargs)

    runtime.jobs.submit = counting_submit  # every job the UI queues passes here
    try:
        with opened_ui(runtime) as page:
            yield runtime, page, submitted
    finally:
        runtime.jobs.stop()


def silhouette(path: Path) -> Path:
    picture = Image.new("RGB", (64, 64))
    ImageDraw.Draw(picture).ellipse((16, 16, 48, 48), fill=(255, 255, 255))
    picture.save(path)
    return path


def choose(page, elem_id: str, text: str) -> None:
    """Pick the option holding `text` in a Gradio dropdown."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator("[role=option]").filter(has_text=text).first.click()


def small_txt2img(page, prompt: str) -> None:
    page.locator("#txt2img_prompt textarea").fill(prompt)
    for name, value in (("steps", 2), ("width", 64), ("height", 64), ("batch_count", 1)):
        set_number(page, f"txt2img_{name}", value)


def test_unit_previews_generates_and_reaches_the_infotext(served, tmp_path):
    runtime, page, submitted = served
    open_tab(page, "txt2img")
    accordion = page.locator("#txt2img_alwayson_controlnet")
    accordion.get_by_text("ControlNet", exact=True).first.click()
    page.locator(f"#{UNIT0}_image input[type=file]").first.set_input_files(
        str(silhouette(tmp_path / "circle.png")))
    page.locator(f"#{UNIT0}_image img").first.wait_for()
    page.locator(f"#{UNIT0}_enabled input[type=checkbox]").check()
    choose(page, f"{UNIT0}_module", "none")
    choose(page, f"{UNIT0}_model", "easel-demo-silhouette")
    assert "easel-demo-silhouette" in page.locator(f"#{UNIT0}_model input").first.input_value()
    page.locator(f"#{UNIT0}_preview_button").click()
    preview = page.locator(f"#{UNIT0}_preview img").first
    preview.wait_for()
    page.wait_for_function(
        f"document.querySelector('#{UNIT0}_preview img')?.naturalWidth === 64")
    screenshot(page, "controlnet_unit_preview")

    small_txt2img(page, "a large circle, controlnet unit")
    before = len(submitted)
    page.locator("#txt2img_generate").click()
    infotext = page.locator("#txt2img_infotext")
    infotext.get_by_text("a large circle, controlnet unit").first.wait_for()
    page.locator("#txt2img_generate").wait_for(state="visible")
    text = infotext.inner_text()
    assert "ControlNet 0: " in text and "Module: none" in text
    assert "Model: easel-demo-silhouette" in text
    assert page.locator("#txt2img_results .easel-error").count() == 0
    assert len(submitted) == before + 1
    screenshot(page, "controlnet_generated")

    # Paste (↙️ with an empty prompt box reads the last result) fills the unit back in.
    enabled = page.locator(f"#{UNIT0}_enabled input[type=checkbox]")
    enabled.uncheck()
    set_number(page, f"{UNIT0}_weight", 0.3)
    page.locator("#txt2img_prompt textarea").fill("")
    page.locator("#txt2img_paste").click()
    page.wait_for_function(
        f"document.querySelector('#{UNIT0}_weight input[type=number]').value === '1'")
    assert enabled.is_checked()
    assert "easel-demo-silhouette" in page.locator(f"#{UNIT0}_model input").first.input_value()


def test_enabled_unit_without_model_is_refused_naming_it(served):
    runtime, page, submitted = served
    open_tab(page, "txt2img")
    accordion = page.locator("#txt2img_alwayson_controlnet")
    if not page.locator(f"#{UNIT0}_enabled").is_visible():
        accordion.get_by_text("ControlNet", exact=True).first.click()
    page.get_by_role("tab", name="ControlNet Unit 1").click()
    page.locator("#txt2img_controlnet_unit1_enabled input[type=checkbox]").check()
    small_txt2img(page, "a circle with a broken unit")
    before = len(submitted)
    page.locator("#txt2img_generate").click()
    panel = page.locator("#txt2img_results .easel-error")
    panel.wait_for()
    assert "ControlNet Unit 1" in panel.inner_text() and "Model" in panel.inner_text()
    screenshot(page, "controlnet_unit_without_model")
    assert len(submitted) == before
    assert runtime.jobs.pending() == 0 and runtime.jobs.current is None
    page.locator("#txt2img_controlnet_unit1_enabled input[type=checkbox]").uncheck()
