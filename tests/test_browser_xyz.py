"""The X/Y/Z plot script as a person meets it in headless Chromium (issue #25 item 1).

The axis types are dropdowns of the axis names (not free text that fails on Generate),
the 📒 button beside an axis's values fills them with every valid choice, and a
Sampler x Steps plot at 64x64 arrives in the gallery as one labelled grid.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import io

import pytest
from PIL import Image

from tests.helpers.browser import ARTIFACTS, screenshot, served_tiny_ui, set_number

pytestmark = pytest.mark.browser

XYZ = "txt2img_script_x_y_z_plot"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with served_tiny_ui(tmp_path_factory.mktemp("data")) as served:
        yield served


def open_options(page, elem_id: str) -> list[str]:
    """Open a dropdown and return the labels of its options."""
    page.locator(f"#{elem_id} input").first.click()
    options = page.locator(f"#{elem_id}").get_by_role("option")
    options.first.wait_for()
    # The selected option also shows a check mark on a line of its own.
    return [text.strip().splitlines()[-1].strip() for text in options.all_inner_texts()]


def choose(page, elem_id: str, value: str) -> None:
    """Pick `value` in a dropdown, as a person types a few letters and clicks it."""
    box = page.locator(f"#{elem_id} input").first
    box.click()
    box.fill(value)
    page.locator(f"#{elem_id}").get_by_role("option", name=value, exact=True).click(
        timeout=20_000)
    page.wait_for_function(
        f"document.querySelector('#{elem_id} input').value == {value!r}")


def values_box(page, axis: str):
    return page.locator(f"#{XYZ}_{axis}_values textarea, #{XYZ}_{axis}_values input").first


def test_axis_types_are_dropdowns_with_a_fill_button(served):
    runtime, page = served
    page.get_by_role("tab", name="txt2img").click()
    choose(page, "txt2img_script", "X/Y/Z plot")
    names = open_options(page, f"{XYZ}_x_type")
    assert {"Nothing", "Seed", "Steps", "CFG Scale", "Prompt S/R", "Sampler",
            "Checkpoint name"} <= set(names), names
    page.locator(f"#{XYZ}_x_type").get_by_role("option", name="Sampler", exact=True).click()
    choose(page, f"{XYZ}_x_type", "Sampler")
    fill = page.locator(f"#{XYZ}_x_values_fill")
    assert fill.get_attribute("title"), "the 📒 button needs a tooltip"
    fill.click()
    page.wait_for_function(
        f"document.querySelector('#{XYZ}_x_values textarea, #{XYZ}_x_values input')"
        ".value.includes('DPM++ 2M')")
    filled = values_box(page, "x").input_value()
    assert "Euler a" in filled and "DPM++ 2M" in filled, filled
    screenshot(page, "xyz_axis_filled")


def test_sampler_by_steps_plot_shows_a_grid(served):
    runtime, page = served
    page.get_by_role("tab", name="txt2img").click()
    if page.locator(f"#{XYZ}_x_type").is_hidden():
        choose(page, "txt2img_script", "X/Y/Z plot")
    page.locator("#txt2img_prompt textarea").fill("a red circle")
    for elem_id, value in (("txt2img_steps", 2), ("txt2img_width", 64),
                           ("txt2img_height", 64)):
        set_number(page, elem_id, value)
    choose(page, f"{XYZ}_x_type", "Sampler")
    values_box(page, "x").fill("DPM++ 2M, Euler a")
    choose(page, f"{XYZ}_y_type", "Steps")
    values_box(page, "y").fill("2,3")
    values_box(page, "y").press("Tab")
    page.locator("#txt2img_generate").click()
    image = page.locator("#txt2img_gallery img").first
    image.wait_for()
    page.locator("#txt2img_infotext").get_by_text("X Type: Sampler").wait_for()
    grid = Image.open(io.BytesIO(page.request.get(image.get_attribute("src")).body()))
    ARTIFACTS.mkdir(exist_ok=True)
    grid.save(ARTIFACTS / "xyz_sampler_by_steps_grid.png")
    # Two columns and two rows of 64 px cells, plus the label bands.
    assert grid.width > 2 * 64 and grid.height > 2 * 64, grid.size
    screenshot(page, "xyz_sampler_by_steps")
