"""txt2img -> Send to inpaint -> draw a mask -> inpaint, in headless Chromium on the demo model.

The page is driven as a person would: type, click, drag the mouse over the canvas. A
spy on the img2img job records the mask the page sent; the result must equal the
txt2img picture (within 1/255) wherever that mask, blurred, cannot reach, and must
differ under it. Screenshots of each step go to test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.runtime import Runtime
from tests.helpers.browser import opened_ui, screenshot, set_number

pytestmark = pytest.mark.browser
ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
SOURCE_PROMPT = "a large red square in the center on a blue background"
TARGET_PROMPT = "a large green square in the center on a blue background"
MASK_BLUR = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    runtime = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir",
                                         str(DEMO.parent)]))
    runtime.models.load_initial()
    runtime.ready.set()
    with opened_ui(runtime) as page:
        yield runtime, page
    runtime.jobs.stop()


def saved(runtime, setting: str) -> list[Path]:
    folder = runtime.paths.output_dir(getattr(runtime.settings.current, setting))
    return sorted(folder.rglob("*.png"))


def test_inpaint_changes_only_under_the_drawn_mask(served, monkeypatch):
    runtime, page = served
    sent = []

    def spy(rt, params):  # records what the page sent, then runs the real job
        sent.append(params)
        return real(rt, params)

    from modules.pipeline.submit import GENERATIONS

    real = GENERATIONS["img2img"]
    monkeypatch.setitem(GENERATIONS, "img2img", spy)  # what the UI submits by name

    page.locator("#txt2img_prompt textarea").fill(SOURCE_PROMPT)
    set_number(page, "txt2img_seed", 5)
    page.locator("#txt2img_generate").click()
    page.locator("#txt2img_gallery img").first.wait_for()
    page.locator("#txt2img_infotext").get_by_text("Seed: 5").wait_for()
    screenshot(page, "inpaint_1_txt2img")
    source = Image.open(saved(runtime, "outdir_txt2img_samples")[-1]).convert("RGB")

    page.locator("#txt2img_send_to_inpaint").click()
    editor = page.locator("#img2maskimg")
    editor.wait_for(state="visible")
    page.wait_for_function(
        "document.querySelector('#img2img_prompt textarea').value.includes('red square')")
    page.locator("#img2img_inpaint_controls").first.wait_for(state="visible")
    canvas = editor.locator("canvas").first
    canvas.wait_for()
    page.wait_for_timeout(1000)  # the editor draws the picture
    screenshot(page, "inpaint_2_sent")

    _paint(page, canvas.bounding_box(), half=0.17, rows=5)
    screenshot(page, "inpaint_3_mask_drawn")

    page.locator("#img2img_prompt textarea").fill(TARGET_PROMPT)
    set_number(page, "img2img_denoising_strength", 1.0)
    page.locator("#img2img_inpainting_fill").get_by_text("latent noise").click()
    set_number(page, "img2img_seed", 6)
    set_number(page, "img2img_mask_blur", MASK_BLUR)
    page.locator("#img2img_generate").click()
    page.locator("#img2img_infotext").get_by_text("Mask blur").wait_for()
    screenshot(page, "inpaint_4_result")

    assert len(sent) == 1
    params = sent[0]
    mask = np.asarray(params.mask.convert("L")) > 0
    assert 0.2 < mask.mean() < 0.8, f"the strokes cover {mask.mean():.0%} of the picture"
    init = np.asarray(params.init_images[0].convert("RGB"), np.int16)
    before = np.asarray(source, np.int16)
    assert np.abs(init - before).max() <= 1, "the picture changed on its way to inpaint"
    result = np.asarray(Image.open(saved(runtime, "outdir_img2img_samples")[-1]).convert("RGB"),
                        np.int16)
    reach = _dilate(mask, 2 * int(2.5 * MASK_BLUR + 0.5) // 2 + 1)
    assert np.abs(result - before)[~reach].max() <= 1
    # Under the mask the new prompt's colour took over: greener, less red than before.
    greener = (result[..., 1] - result[..., 0])[mask].mean()
    assert greener > (before[..., 1] - before[..., 0])[mask].mean() + 60, greener


def _paint(page, box: dict, *, half: float, rows: int) -> None:
    """Horizontal strokes over the middle of the picture (the editor centres it and fits
    its shorter side), from -half to +half of that side around the centre."""
    side = min(box["width"], box["height"])
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    for row in range(rows):
        y = cy - half * side + row * (2 * half * side) / (rows - 1)
        page.mouse.move(cx - half * side, y)
        page.mouse.down()
        page.mouse.move(cx + half * side, y, steps=8)
        page.mouse.up()


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    grown = mask.copy()
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            grown |= np.roll(np.roll(mask, dy, axis=0), dx, axis=1)
    return grown


def test_ctrl_up_and_down_change_emphasis(served):
    runtime, page = served
    page.get_by_role("tab", name="txt2img").first.click()
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red circle")
    prompt.evaluate("box => box.setSelectionRange(2, 5)")
    prompt.press("Control+ArrowUp")
    assert prompt.input_value() == "a (red:1.1) circle"
    prompt.press("Control+ArrowUp")
    assert prompt.input_value() == "a (red:1.2) circle"
    prompt.press("Control+ArrowDown")
    prompt.press("Control+ArrowDown")
    assert prompt.input_value() == "a red circle"
    prompt.evaluate("box => box.setSelectionRange(9, 9)")  # caret inside "circle"
    prompt.press("Control+ArrowDown")
    assert prompt.input_value() == "a red (circle:0.9)"
    edit = "([t, s, e, up]) => window.easelEditAttention(t, s, e, up)"
    assert page.evaluate(edit, ["((cat))", 3, 3, True])["text"] == "((cat:1.2))"
    assert page.evaluate(edit, ["(cat)", 2, 2, True])["text"] == "(cat:1.2)"


def test_cards_insert_tags_and_generate_forever_repeats(served):
    runtime, page = served
    lora = runtime.paths.lora_dir / "inkwash.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"listed by name only")
    Image.new("RGB", (96, 96), "orange").save(lora.with_suffix(".png"))
    page.get_by_role("tab", name="txt2img").first.click()
    prompt = page.locator("#txt2img_prompt textarea")
    prompt.fill("a red circle")
    page.locator("#txt2img_extra_networks").click()
    card = page.locator("#txt2img_extra_networks_cards .extra-network-card[data-kind=lora]")
    card.wait_for()
    card.click()
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value"
                           " == 'a red circle <lora:inkwash:1>'")
    screenshot(page, "extra_networks_cards")
    page.locator("#txt2img_extra_networks_cards .extra-network-card[data-kind=checkpoint]"
                 ).click()  # the loaded one: selecting it again keeps it, and saves it
    title = runtime.models.current.info.title
    for _ in range(60):
        if runtime.settings.current.sd_model_checkpoint == title:
            break
        page.wait_for_timeout(500)
    assert runtime.settings.current.sd_model_checkpoint == title
    page.locator("#txt2img_extra_networks").click()
    prompt.fill("a blue square")
    before = len(saved(runtime, "outdir_txt2img_samples"))
    page.locator("#txt2img_generate").click(button="right")
    page.locator("#txt2img_generate_forever_toggle").click()
    for _ in range(120):  # up to a minute
        if len(saved(runtime, "outdir_txt2img_samples")) >= before + 3:
            break
        page.wait_for_timeout(500)
    page.locator("#txt2img_generate:visible, #txt2img_interrupt:visible").first.click(
        button="right")  # whichever is shown: a job may be running
    page.locator("#txt2img_generate_forever_toggle", has_text="Cancel").click()
    page.locator("#txt2img_generate").wait_for(state="visible")
    page.wait_for_timeout(2000)
    made = len(saved(runtime, "outdir_txt2img_samples")) - before
    assert made >= 3, f"generate forever made {made} images"
    page.wait_for_timeout(2000)
    assert len(saved(runtime, "outdir_txt2img_samples")) - before == made  # it stopped
    assert runtime.models.current.info.stem == "easel-demo"
