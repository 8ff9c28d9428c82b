"""Layout around a run, checked in headless Chromium (issue #25 item 8).

At 1280×800 and at 400 px wide: one result is shown whole in the gallery (not zoomed
or cropped); nothing on the page moves when Generate turns into Interrupt/Skip; the
idle progress bar leaves no empty band above the gallery; the inpaint editor's label
does not cover its toolbar. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import pytest

from tests.helpers.browser import opened_ui, screenshot, set_number
from tests.helpers.webui_runtime import make_runtime

pytestmark = pytest.mark.browser

WIDTHS = [1280, 400]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    runtime = make_runtime(tmp_path_factory.mktemp("data"))
    with opened_ui(runtime) as page:
        page.set_default_timeout(60_000)
        yield runtime, page
    runtime.jobs.stop()


def _open_txt2img(page, width: int) -> None:
    page.set_viewport_size({"width": width, "height": 800})
    page.evaluate("() => document.querySelector('#tabs [role=tab]').click()")
    page.locator("#txt2img_prompt textarea").wait_for(state="visible")
    page.wait_for_timeout(300)


def _box(page, selector: str) -> dict:
    """The element's box in page coordinates (scroll included), so scrolling cannot fake
    a move."""
    return page.evaluate("""(sel) => {
      const r = document.querySelector(sel).getBoundingClientRect();
      return {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height};
    }""", selector)


# The shown picture's box: the <img> box, narrowed to the part object-fit draws into.
SHOWN_IMAGES_JS = """() => [...document.querySelectorAll('#txt2img_gallery img')]
  .filter((img) => img.offsetParent !== null && img.naturalWidth > 0).map((img) => {
    const r = img.getBoundingClientRect();
    const fit = getComputedStyle(img).objectFit;
    let w = r.width, h = r.height;
    if (fit === 'contain' || fit === 'scale-down') {
      const s = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight);
      w = img.naturalWidth * s; h = img.naturalHeight * s;
    }
    return {x: r.x + (r.width - w) / 2, y: r.y + (r.height - h) / 2, width: w, height: h,
            fit, ratio: w / h, natural: img.naturalWidth / img.naturalHeight,
            boxRatio: r.width / r.height};
  })"""


def _generate_one(page, steps: int) -> None:
    page.locator("#txt2img_prompt textarea").fill("a red square")
    for elem_id, value in (("txt2img_steps", steps), ("txt2img_batch_count", 1),
                           ("txt2img_batch_size", 1), ("txt2img_width", 64),
                           ("txt2img_height", 64)):
        set_number(page, elem_id, value)


@pytest.mark.parametrize("width", WIDTHS)
def test_idle_progress_bar_leaves_no_gap_above_the_gallery(served, width):
    _, page = served
    _open_txt2img(page, width)
    progress = _box(page, "#txt2img_progress")
    gallery = _box(page, "#txt2img_gallery")
    # The idle bar is invisible; it must not push the gallery down by its height.
    assert gallery["y"] - progress["y"] < 2, (progress, gallery)
    if width == 1280:  # side by side: the gallery starts level with the settings column
        settings = _box(page, "#txt2img_settings")
        assert abs(gallery["y"] - settings["y"]) <= 2, (settings, gallery)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_page_jump_when_interrupt_and_skip_appear(served, width):
    runtime, page = served
    _open_txt2img(page, width)
    _generate_one(page, steps=150)
    page.evaluate("() => window.scrollTo(0, 0)")
    before = {name: _box(page, sel) for name, sel in
              (("prompt", "#txt2img_prompt"), ("gallery", "#txt2img_gallery"))}
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_interrupt").wait_for(state="visible")
    page.locator("#txt2img_progress").get_by_text("Step ").wait_for()
    during = {name: _box(page, sel) for name, sel in
              (("prompt", "#txt2img_prompt"), ("gallery", "#txt2img_gallery"))}
    progress = _box(page, "#txt2img_progress .easel-progress")
    screenshot(page, f"layout_running_{width}")
    page.locator("#txt2img_interrupt").click()
    page.locator("#txt2img_generate").wait_for(state="visible")
    page.wait_for_function("() => !document.querySelector('#txt2img_progress .easel-progress')"
                           "|| document.querySelector('#txt2img_progress .easel-idle')")
    after = {name: _box(page, sel) for name, sel in
             (("prompt", "#txt2img_prompt"), ("gallery", "#txt2img_gallery"))}
    for name in before:
        assert abs(during[name]["y"] - before[name]["y"]) <= 2, (name, before, during)
        assert abs(after[name]["y"] - before[name]["y"]) <= 2, (name, before, after)
    assert progress["height"] > 10, progress  # the running bar is still drawn


@pytest.mark.parametrize("width", WIDTHS)
def test_a_single_result_fits_the_gallery(served, width):
    _, page = served
    _open_txt2img(page, width)
    _generate_one(page, steps=3)
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_infotext").get_by_text("Steps: 3").wait_for()
    page.locator("#txt2img_gallery img").first.wait_for()
    page.wait_for_timeout(500)
    page.locator("#txt2img_gallery").scroll_into_view_if_needed()
    screenshot(page, f"layout_single_result_{width}")
    gallery = page.evaluate("""() => {
      const r = document.querySelector('#txt2img_gallery').getBoundingClientRect();
      return {x: r.x, y: r.y, width: r.width, height: r.height};
    }""")
    shown = page.evaluate(SHOWN_IMAGES_JS)
    assert len(shown) == 1, shown
    image = shown[0]
    assert abs(image["ratio"] - image["natural"]) < 0.02, image  # not stretched
    # Not cropped: what object-fit draws is the whole box, or it keeps the picture whole.
    assert image["fit"] in ("contain", "scale-down") or \
        abs(image["boxRatio"] - image["natural"]) < 0.02, image
    for edge in ("x", "y"):
        size = "width" if edge == "x" else "height"
        assert image[edge] >= gallery[edge] - 1, (image, gallery)
        assert image[edge] + image[size] <= gallery[edge] + gallery[size] + 1, (image, gallery)
    # Shown at a useful size: the whole picture, not a small thumbnail in a corner.
    assert min(image["width"], image["height"]) >= 0.5 * min(gallery["width"],
                                                             gallery["height"]), (image, gallery)


def _overlaps(a: dict, b: dict) -> bool:
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


@pytest.mark.parametrize("width", WIDTHS)
def test_inpaint_label_clears_the_editor_toolbar(served, width):
    _, page = served
    _open_txt2img(page, width)
    if not page.locator("#txt2img_gallery img").count():
        _generate_one(page, steps=3)
        page.locator("#txt2img_generate").click()
        page.locator("#txt2img_gallery img").first.wait_for()
    page.locator("#txt2img_send_to_inpaint").click()
    editor = page.locator("#img2maskimg")
    editor.wait_for(state="visible")
    editor.locator("canvas").first.wait_for()
    page.wait_for_timeout(1000)  # the editor draws the picture
    editor.scroll_into_view_if_needed()
    screenshot(page, f"layout_inpaint_{width}")
    boxes = page.evaluate("""() => {
      const root = document.querySelector('#img2maskimg');
      const label = root.querySelector('[data-testid=block-label]');
      const r = (e) => { const b = e.getBoundingClientRect();
        return {x: b.x, y: b.y, width: b.width, height: b.height}; };
      const buttons = [...root.querySelectorAll('button')]
        .filter((b) => b.offsetParent !== null && !label.contains(b))
        .map((b) => ({...r(b), name: b.getAttribute('aria-label') || b.title || b.innerText}));
      return {label: r(label), buttons};
    }""")
    assert boxes["label"]["width"] > 0 and len(boxes["buttons"]) >= 3, boxes
    covered = [b for b in boxes["buttons"] if _overlaps(boxes["label"], b)]
    assert not covered, (boxes["label"], covered)
