"""Issue #25 items 7 and 9 in headless Chromium: extra-network cards and the demo's limits.

The shipped demo checkpoint is loaded (`--ckpt`), with copies of the shipped "easel-bar"
LoRA and embedding in the data folder: the two share a name, so their cards must say
which is which. Cards without a preview show their name and kind; the search box filters,
the sort reorders, and a second click on a card takes its tag out of the prompt again.
The Train tab says what each sub-tab does, names "Overwrite Old Embedding" when a name is
taken, defaults the LoRA log to its own folder and shows Interrupt only while training.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image

from modules.training.concept_jobs import TrainLoraParams, log_folder
from modules.training.shapes import ShapeLabels, render
from tests.helpers.browser import opened_ui, screenshot
from tests.helpers.webui_runtime import make_runtime

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
SHIPPED_LORA = ROOT / "models" / "Lora" / "easel-bar.safetensors"
SHIPPED_EMBEDDING = ROOT / "models" / "embeddings" / "easel-bar.safetensors"
CARDS = "#txt2img_extra_networks_cards"
PROMPT = "#txt2img_prompt textarea"


def _data_folder(data: Path) -> Path:
    for source, folder in ((SHIPPED_LORA, "Lora"), (SHIPPED_EMBEDDING, "embeddings")):
        (data / "models" / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(source, data / "models" / folder / source.name)
    newer = data / "models" / "Lora" / "aa-newer.safetensors"  # first by date, first by name
    newer.write_bytes(b"listed by name only")
    Image.new("RGB", (96, 96), "orange").save(newer.with_suffix(".preview.png"))
    old = time.time() - 3600
    os.utime(data / "models" / "Lora" / SHIPPED_LORA.name, (old, old))
    later = time.time() + 60
    os.utime(newer, (later, later))
    bars = data / "bars"
    bars.mkdir(exist_ok=True)
    for color in ("red", "white"):
        truth = ShapeLabels(shape="bar", color=color, background="blue", position="center",
                            size="large")
        Image.fromarray(render(truth, resolution=64)).save(bars / f"{color} bar.png")
    return data


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    data = _data_folder(tmp_path_factory.mktemp("cards-data"))
    runtime = make_runtime(data, "--ckpt", str(DEMO), load=False)
    runtime.models.load_initial(ckpt_flag=str(DEMO))
    runtime.ready.set()
    with opened_ui(runtime) as page:
        yield runtime, page
    runtime.jobs.stop()


def _prompt_is(page, text: str) -> None:
    page.wait_for_function("t => document.querySelector('#txt2img_prompt textarea').value == t",
                           arg=text)


def _lora_names(page) -> list[str]:
    return page.locator(f"{CARDS} .extra-network-card[data-kind=lora]").evaluate_all(
        "cards => cards.map(c => c.dataset.name)")


def test_cards_show_kind_search_sort_and_toggle(served):
    runtime, page = served
    page.get_by_role("tab", name="txt2img").first.click()
    page.locator(PROMPT).fill("a red circle")
    page.locator("#txt2img_extra_networks").click()
    lora = page.locator(f"{CARDS} .extra-network-card[data-kind=lora][data-name=easel-bar]")
    embedding = page.locator(
        f"{CARDS} .extra-network-card[data-kind=embedding][data-name=easel-bar]")
    lora.wait_for()
    # Same name, told apart by the badge; no preview: the name and kind in its place.
    assert lora.locator(".card-kind").inner_text() == "LoRA"
    assert embedding.locator(".card-kind").inner_text() == "Embedding"
    assert lora.locator(".card-placeholder-name").inner_text() == "easel-bar"
    assert embedding.locator(".card-placeholder-kind").inner_text() == "Embedding"
    assert page.locator(f"{CARDS} .extra-network-card[data-name=aa-newer] img").count() == 1
    screenshot(page, "cards_badges_placeholders")

    assert _lora_names(page) == ["aa-newer", "easel-bar"]
    page.locator("#txt2img_extra_networks_sort").get_by_text("Date modified").click()
    page.wait_for_function("() => document.querySelector("
                           "'#txt2img_extra_networks_cards .extra-network-card[data-kind=lora]')"
                           ".dataset.name == 'aa-newer'")
    page.locator("#txt2img_extra_networks_sort").get_by_text("Name").click()

    search = page.locator("#txt2img_extra_networks_search textarea, "
                          "#txt2img_extra_networks_search input").first
    search.fill("bar")
    page.locator(f"{CARDS} .extra-network-card[data-name=aa-newer]").wait_for(state="detached")
    assert page.locator(f"{CARDS} .extra-network-card").count() == 2  # the two easel-bars
    assert "No match." in page.locator(CARDS).inner_text()  # no checkpoint holds "bar"
    screenshot(page, "cards_search_bar")

    lora.click()
    _prompt_is(page, "a red circle <lora:easel-bar:1>")
    lora.click()  # again: taken out (A1111 toggles)
    _prompt_is(page, "a red circle")
    embedding.click()
    _prompt_is(page, "a red circle easel-bar")
    lora.click()
    _prompt_is(page, "a red circle easel-bar <lora:easel-bar:1>")
    embedding.click()  # the word goes; the LoRA tag of the same name stays
    _prompt_is(page, "a red circle <lora:easel-bar:1>")
    search.fill("")
    page.locator(f"{CARDS} .extra-network-card[data-name=aa-newer]").wait_for()
    page.locator("#txt2img_extra_networks").click()


def test_demo_note_shows_with_the_demo_model(served):
    runtime, page = served
    assert runtime.models.current.info.stem == "easel-demo"
    page.get_by_role("tab", name="txt2img").first.click()
    note = page.locator("#txt2img_demo_note")
    note.wait_for(state="visible")
    assert "64" in note.inner_text() and "Hires. fix" in note.inner_text()
    screenshot(page, "txt2img_demo_note")


def test_train_tab_lines_log_folder_and_duplicate_name(served):
    runtime, page = served
    page.get_by_role("tab", name="Train").first.click()
    line = page.locator("#train_create_description")
    line.wait_for(state="visible")
    assert "untrained embedding" in line.inner_text()
    assert not page.locator("#train_interrupt").is_visible()
    name = page.locator("#train_name textarea, #train_name input").first
    name.fill("twice")
    page.locator("#train_create_button").click()
    page.wait_for_function("() => document.querySelector('#train_create_info textarea')"
                           ".value.startsWith('Created')")
    page.locator("#train_create_button").click()
    error = page.get_by_text("already exists").first
    error.wait_for(state="visible")
    assert "Overwrite Old Embedding" in error.inner_text()
    page.wait_for_timeout(500)  # the toast slides in
    screenshot(page, "train_duplicate_embedding", full_page=False)
    page.get_by_role("tab", name="Train LoRA").click()
    page.locator("#train_lora_description").wait_for(state="visible")
    assert "<lora:name:1>" in page.locator("#train_lora_description").inner_text()
    log = page.locator("#train_lora_log_directory textarea, #train_lora_log_directory input")
    assert log.first.input_value() == "lora_training"
    screenshot(page, "train_lora_tab")


def test_interrupt_shows_only_while_training(served):
    runtime, page = served
    page.get_by_role("tab", name="Train").first.click()
    page.get_by_role("tab", name="Train LoRA").click()
    page.locator("#train_lora_name textarea, #train_lora_name input").first.fill("ui-stop")
    data_root = runtime.paths.data_dir / "bars"
    page.locator("#train_lora_data_root textarea, #train_lora_data_root input").first.fill(
        str(data_root))
    page.locator("#train_lora_button").click()
    interrupt = page.locator("#train_interrupt")
    interrupt.wait_for(state="visible")
    screenshot(page, "train_interrupt_visible")
    interrupt.click()
    interrupt.wait_for(state="hidden")
    page.wait_for_function("() => document.querySelector('#train_info textarea')"
                           ".value.includes('LoRA saved')")


def test_lora_log_folder_defaults_to_its_own(served):
    runtime, _ = served
    folder = log_folder(runtime, TrainLoraParams(lora_name="x", log_directory=""), "x")
    assert folder.parent.parent.name == "lora_training"
    assert TrainLoraParams().log_directory == "lora_training"
