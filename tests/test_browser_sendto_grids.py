"""Issue #25 items 4, 6 and 10 in headless Chromium: a 2x2 batch writes a grid file,
"Send to extras" keeps the picture's parameters in the upscaled PNG, PNG Info offers
the four "Send to" buttons, and `--data-dir` still lists the shipped demo checkpoint.

A tiny random checkpoint under a temporary `--data-dir` is served on a loopback port
(tests/helpers/browser.py); screenshots go to test-artifacts/.
"""

from __future__ import annotations

import time

import pytest
from PIL import Image, PngImagePlugin

from modules.imaging.save import read_image_info
from modules.paths import ROOT
from tests.helpers.browser import open_tab, screenshot, served_tiny_ui, set_number

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_tiny_ui(tmp_path_factory.mktemp("data")) as served:
        yield served



def files_under(folder) -> set:
    return set(folder.rglob("*.png")) if folder.exists() else set()


def wait_for_new(folder, before: set, timeout: float = 60.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        new = files_under(folder) - before
        if new:
            time.sleep(0.3)  # let the writer finish the file
            return sorted(new)
        time.sleep(0.2)
    return []


def generate(page, prompt: str, *, batch_count: int = 1, batch_size: int = 1) -> None:
    open_tab(page, "txt2img")
    page.locator("#txt2img_prompt textarea").fill(prompt)
    for name, value in (("steps", 2), ("width", 64), ("height", 64),
                        ("batch_count", batch_count), ("batch_size", batch_size)):
        set_number(page, f"txt2img_{name}", value)
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_infotext").get_by_text(prompt).first.wait_for()


def test_two_by_two_batch_writes_a_grid_file(served):
    runtime, page = served
    folder = runtime.paths.data_dir / "outputs" / "txt2img-grids"
    before = files_under(folder)
    generate(page, "a batch grid", batch_count=2, batch_size=2)
    new = wait_for_new(folder, before)
    screenshot(page, "sendto_grids_batch")
    assert len(new) == 1, new
    with Image.open(new[0]) as grid:
        assert grid.size == (128, 128)
        infotext, _ = read_image_info(grid)
    assert infotext.startswith("a batch grid")


def test_send_to_extras_keeps_the_parameters(served):
    runtime, page = served
    generate(page, "a sent circle")
    page.locator("#txt2img_send_to_extras").click()
    page.locator("#extras_image img").first.wait_for()
    box = page.locator("#extras_upscaler_1 input")
    box.click()
    box.fill("Lanczos")
    page.get_by_role("option", name="Lanczos", exact=True).click()
    set_number(page, "extras_upscaling_resize", 2)
    folder = runtime.paths.data_dir / "outputs" / "extras-images"
    before = files_under(folder)
    page.locator("#extras_generate").click()
    page.locator("#extras_gallery img").first.wait_for()
    new = wait_for_new(folder, before)
    screenshot(page, "sendto_extras_result")
    assert len(new) == 1, new
    with Image.open(new[0]) as upscaled:
        assert upscaled.size == (128, 128)
        infotext, items = read_image_info(upscaled)
    assert infotext and infotext.startswith("a sent circle") and "Steps: 2" in infotext
    assert "Postprocess upscaler: Lanczos" in items["extras"]


def test_png_info_offers_the_four_send_buttons(served, tmp_path):
    _, page = served
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a png info square\nSteps: 4, Seed: 9, Size: 64x64")
    path = tmp_path / "in.png"
    Image.new("RGB", (64, 64), (30, 30, 200)).save(path, pnginfo=info)
    open_tab(page, "PNG Info")
    page.locator("#pnginfo_image input[type=file]").set_input_files(str(path))
    page.wait_for_function(
        "document.querySelector('#pnginfo_parameters textarea').value.includes('Steps: 4')")
    for name in ("txt2img", "img2img", "inpaint", "extras"):
        button = page.locator(f"#pnginfo_send_to_{name}")
        assert button.is_visible(), name
        assert button.inner_text().strip() == f"Send to {name}"
    screenshot(page, "sendto_pnginfo_buttons")
    page.locator("#pnginfo_send_to_extras").click()
    page.locator("#extras_image img").first.wait_for()
    page.locator("#extras_single_tab").wait_for(state="visible")


def test_data_dir_lists_the_demo_checkpoint(served):
    runtime, page = served
    assert runtime.paths.data_dir != ROOT  # a --data-dir of its own, without the demo
    open_tab(page, "txt2img")
    page.locator("#setting_sd_model_checkpoint input").click()
    option = page.get_by_role("option", name="easel-demo", exact=False)
    option.first.wait_for()
    screenshot(page, "sendto_data_dir_checkpoints")
    assert any(text.startswith("easel-demo") for text in option.all_inner_texts())
    page.keyboard.press("Escape")
