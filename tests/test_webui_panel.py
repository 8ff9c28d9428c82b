"""The generation panel and the img2img tab without a browser: conversions and handlers.

Widget values are turned into requests exactly as the events do, and the handlers run
on a tiny random checkpoint; pictures are checked where the conversion decides them
(masks from drawn layers, the untouched outside of an inpainted picture).
"""

from __future__ import annotations

import zipfile

import gradio as gr
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.pipeline.params import ParamsError
from modules.scripts.args import arg_specs
from modules.styles import PromptStyle, load_styles, save_style
from tests.helpers.webui_runtime import make_runtime
from webui import extra_networks as EN
from webui import fields as F
from webui import img2img_fields as I
from webui import panel_results as R
from webui import styles_ui as S
from webui.app import create_app
from webui.panel_wiring import paste_values, updates_for
from webui.script_ui import ScriptControls, ScriptsUI, control_for
from webui.tabs import img2img as img2img_tab
from webui.tabs import txt2img as txt2img_tab

COMMON = {"prompt": "a red circle", "negative_prompt": "", "sampler_name": "Euler a",
          "scheduler": "Automatic", "steps": 3, "width": 64, "height": 64, "n_iter": 1,
          "batch_size": 1, "cfg_scale": 7.0, "seed": 5, "seed_extras": False, "subseed": -1,
          "subseed_strength": 0.0, "seed_resize_from_w": 0, "seed_resize_from_h": 0,
          "override_settings": [], "styles": []}
IMG2IMG = {**COMMON, "resize_mode": "Just resize", "resize_by": I.RESIZE_TO, "scale_by": 1.0,
           "denoising_strength": 0.75, "mask_blur": 4, "inpainting_mask_invert": "Inpaint masked",
           "inpainting_fill": "original", "inpaint_full_res": "Whole picture",
           "inpaint_full_res_padding": 32}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("data"))
    yield rt
    rt.jobs.stop()


def picture(color=(200, 40, 40), size=(64, 64)) -> Image.Image:
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[...] = color
    array[:, : size[0] // 2] = (20, 60, 200)  # two halves, so resizing shows
    return Image.fromarray(array)


def stroke_layer(box, size=(64, 64)) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), box)
    return layer


# ---------------------------------------------------------------- conversions


def test_img2img_fields_become_a_request():
    params = I.img2img_params_from_fields(
        {**IMG2IMG, "resize_mode": "Resize and fill", "mask_blur": 7.0,
         "inpainting_mask_invert": "Inpaint not masked", "inpainting_fill": "latent noise",
         "inpaint_full_res": "Only masked", "inpaint_full_res_padding": 12.0},
        [picture()], None)
    assert (params.resize_mode, params.mask_blur_x, params.mask_blur_y) == (2, 7, 7)
    assert (params.inpainting_mask_invert, params.inpainting_fill) == (1, 2)
    assert params.inpaint_full_res is True and params.inpaint_full_res_padding == 12
    assert params.scale_by is None and params.denoising_strength == 0.75
    by = I.img2img_params_from_fields({**IMG2IMG, "resize_by": I.RESIZE_BY, "scale_by": 0.5},
                                      [picture()], None)
    assert by.scale_by == 0.5
    by.validate()


def test_a_radio_label_that_is_not_offered_names_the_field():
    with pytest.raises(ParamsError) as error:
        I.img2img_params_from_fields({**IMG2IMG, "inpainting_fill": "paint it"}, [picture()],
                                     None)
    assert error.value.field == "inpainting_fill" and "paint it" in error.value.reason
    assert F.label_for("inpainting_fill") == "Masked content"


def test_hires_and_refiner_fields():
    off = F.params_from_fields({**COMMON, "enable_hr": False, "denoising_strength": 0.4})
    assert off.enable_hr is False and off.denoising_strength is None
    on = F.params_from_fields({**COMMON, "enable_hr": True, "denoising_strength": 0.4,
                               "hr_upscaler": "Latent (nearest)", "hr_scale": 1.5,
                               "hr_second_pass_steps": 4.0, "hr_checkpoint_name":
                               F.SAME_CHECKPOINT, "hr_sampler_name": "Euler",
                               "hr_scheduler": F.SAME_SCHEDULER, "hr_prompt": "sharp"})
    assert (on.denoising_strength, on.hr_scale, on.hr_second_pass_steps) == (0.4, 1.5, 4)
    assert on.hr_checkpoint_name is None and on.hr_scheduler is None
    assert (on.hr_sampler_name, on.hr_prompt, on.hr_upscaler) == ("Euler", "sharp",
                                                                    "Latent (nearest)")
    on.validate()
    chosen = F.params_from_fields({**COMMON, "refiner_enabled": True,
                                   "refiner_checkpoint": "other.safetensors",
                                   "refiner_switch_at": 0.6})
    assert (chosen.refiner_checkpoint, chosen.refiner_switch_at) == ("other.safetensors", 0.6)
    closed = F.params_from_fields({**COMMON, "refiner_enabled": False,
                                   "refiner_checkpoint": "other.safetensors"})
    assert closed.refiner_checkpoint is None
    assert F.params_from_fields({**COMMON, "refiner_enabled": True,
                                 "refiner_checkpoint": "None"}).refiner_checkpoint is None
    with pytest.raises(ParamsError, match="refiner_switch_at"):
        F.params_from_fields({**COMMON, "refiner_enabled": True, "refiner_checkpoint": "x",
                              "refiner_switch_at": 0.0}).validate()


def test_paste_fills_hires_fields_and_turns_hires_on():
    text = ("a cat\nSteps: 7, Sampler: Euler, CFG scale: 4, Seed: 3, Size: 64x64, "
            "Denoising strength: 0.45, Hires upscale: 1.5, Hires upscaler: Latent, "
            "Hires steps: 5")
    values = F.fields_from_infotext(text, make_settings())
    assert values["enable_hr"] is True and values["hr_scale"] == 1.5
    assert values["hr_second_pass_steps"] == 5 and values["denoising_strength"] == 0.45
    updates = updates_for(values)
    assert len(updates) == len(F.FIELDS) and updates[F.FIELDS.index("hr_scale")] == 1.5
    img2img_values = F.fields_from_infotext(text, make_settings(), names=I.IMG2IMG_FIELDS)
    assert "hr_scale" not in img2img_values and img2img_values["denoising_strength"] == 0.45


def make_settings():
    from modules.settings import Settings

    return Settings()


# ---------------------------------------------------------------- pictures per mode


def test_inpaint_mask_is_where_strokes_were_drawn():
    value = {"background": picture(), "layers": [stroke_layer((10, 20, 30, 40))],
             "composite": None}
    images, mask = I.mode_images("inpaint", inpaint=value)
    assert images[0].mode == "RGB" and images[0].size == (64, 64)
    drawn = np.asarray(mask) > 0
    assert drawn[20:40, 10:30].all() and drawn.sum() == 20 * 20
    with pytest.raises(ParamsError, match="draw a mask"):
        I.mode_images("inpaint", inpaint={**value, "layers": [stroke_layer((0, 0, 0, 0))]})
    with pytest.raises(ParamsError, match="Inpaint: no picture"):
        I.mode_images("inpaint", inpaint=None)


def test_sketch_modes_composite_the_strokes():
    red = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    red.paste((255, 0, 0, 255), (0, 0, 8, 8))
    value = {"background": picture(), "layers": [red], "composite": None}
    (sketched,), mask = I.mode_images("sketch", sketch=value)
    assert mask is None and sketched.getpixel((2, 2)) == (255, 0, 0)
    assert sketched.getpixel((40, 40)) == picture().getpixel((40, 40))
    (_, ), mask = I.mode_images("inpaint_sketch", inpaint_sketch=value)
    assert np.asarray(mask)[:8, :8].all() and np.asarray(mask).sum() == 64 * 255
    upload_mask = Image.new("L", (64, 64), 255)
    images, mask = I.mode_images("inpaint_upload", upload=picture(), upload_mask=upload_mask)
    assert mask is upload_mask
    with pytest.raises(ParamsError, match="upload a mask"):
        I.mode_images("inpaint_upload", upload=picture())


# ---------------------------------------------------------------- handlers


def last(updates):
    return list(updates)[-1]


def test_inpaint_handler_keeps_the_outside(runtime):
    source = picture()
    value = {"background": source.convert("RGBA"), "layers": [stroke_layer((24, 24, 40, 40))],
             "composite": None}
    fields = {**IMG2IMG, "denoising_strength": 1.0, "mask_blur": 2,
              "inpainting_fill": "latent noise"}
    gallery, info, _, results = last(img2img_tab.generate(runtime, fields, "inpaint",
                                                          {"inpaint": value}))
    result = np.asarray(gallery[0].convert("RGB"), np.int16)
    before = np.asarray(source, np.int16)
    outside = np.ones((64, 64), bool)
    outside[16:48, 16:48] = False  # the 16 px stroke, its blur (5 px) and a margin
    assert np.abs(result - before)[outside].max() <= 1
    assert np.abs(result - before)[24:40, 24:40].max() > 10  # repainted under the mask
    assert "Mask blur: 2" in info and "Denoising strength: 1.0" in info
    assert "Masked content: latent noise" in results["infotexts"][0]


def test_img2img_handler_resize_by_and_errors(runtime):
    fields = {**IMG2IMG, "resize_by": I.RESIZE_BY, "scale_by": 2.0, "denoising_strength": 0.3}
    gallery, *_ = last(img2img_tab.generate(runtime, fields, "img2img",
                                            {"image": picture(size=(48, 32))}))
    assert gallery[0].size == (96, 64)
    with pytest.raises(gr.Error, match="img2img: no picture"):
        last(img2img_tab.generate(runtime, IMG2IMG, "img2img", {"image": None}))
    with pytest.raises(gr.Error, match="Denoising strength: 1.5 is outside"):
        last(img2img_tab.generate(runtime, {**IMG2IMG, "denoising_strength": 1.5}, "img2img",
                                  {"image": picture()}))


def test_batch_from_folders(runtime, tmp_path):
    source, out, masks = tmp_path / "in", tmp_path / "out", tmp_path / "masks"
    for folder in (source, masks):
        folder.mkdir()
    picture().save(source / "a.png")
    picture((10, 200, 10)).save(source / "b.png")
    Image.new("L", (64, 64), 255).save(masks / "b.png")
    batch = {"input_dir": str(source), "output_dir": str(out), "mask_dir": str(masks)}
    gallery, _, _, results = last(img2img_tab.generate(runtime, {**IMG2IMG, "steps": 2},
                                                       "batch", {}, batch))
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert len(results["infotexts"]) == len(gallery) == 3  # a grid first
    assert "Mask blur" not in results["infotexts"][1] and "Mask blur: 4" in results["infotexts"][2]
    with pytest.raises(gr.Error, match="Input directory"):
        last(img2img_tab.generate(runtime, IMG2IMG, "batch", {},
                                  {"input_dir": str(tmp_path / "nope")}))


def test_styles_merge_when_generating(runtime):
    save_style(runtime.paths.styles_file, PromptStyle(name="neon", prompt="{prompt}, neon",
                                                      negative_prompt="dull"))
    _, info, _, _ = last(txt2img_tab.generate(runtime, {**COMMON, "styles": ["neon"]}))
    assert "a red circle, neon" in info and "Negative prompt: dull" in info
    with pytest.raises(gr.Error, match="Styles: style 'gone' not found"):
        last(txt2img_tab.generate(runtime, {**COMMON, "styles": ["gone"]}))


def test_style_editor_saves_applies_and_deletes(tmp_path):
    rt = make_runtime(tmp_path, load=False)
    picked, name = S.save_edited(rt, " warm ", "{prompt}, warm light", "cold", ["warm"])
    assert picked["choices"] == ["warm"] and name["value"] == "warm"
    assert load_styles(rt.paths.styles_file) == [PromptStyle("warm", "{prompt}, warm light",
                                                             "cold")]
    assert S.apply_to_prompts(rt, "a cat", "", ["warm"]) == ("a cat, warm light", "cold", [])
    assert S.style_text(rt, "warm") == ("{prompt}, warm light", "cold")
    with pytest.raises(gr.Error, match="type a name"):
        S.save_edited(rt, "  ", "x", "", [])
    picked, _ = S.delete_edited(rt, "warm", ["warm"])
    assert picked["choices"] == [] and picked["value"] == []
    with pytest.raises(gr.Error, match="not found"):
        S.delete_edited(rt, "warm", [])


def test_scripts_send_only_the_chosen_scripts_args():
    from modules.scripts.builtin.prompt_matrix import PromptMatrix

    specs = arg_specs(PromptMatrix.Args)
    assert [s.kind for s in specs[:3]] == ["bool", "bool", "str"]
    with gr.Blocks():
        widgets = [control_for(spec, f"x_{spec.name}") for spec in specs]
    assert isinstance(widgets[0], gr.Checkbox) and isinstance(widgets[2], gr.Dropdown)
    assert isinstance(widgets[4], gr.Slider)
    controls = [ScriptControls(title="Prompt matrix", group=None,
                               names=[s.name for s in specs], kinds=[s.kind for s in specs],
                               widgets=widgets),
                ScriptControls(title="Other", group=None, names=["n"], kinds=["int"],
                               widgets=[None])]
    ui = ScriptsUI(dropdown=None, controls=controls)
    values = ["Prompt matrix", True, False, "negative", "space", 10.0, 3.0]
    request = ui.request(values)
    assert request == {"script_name": "Prompt matrix", "script_args": {
        "put_at_start": True, "different_seeds": False, "prompt_type": "negative",
        "variations_delimiter": "space", "margin_size": 10}}
    assert ui.request(["None", *values[1:]]) == {"script_name": None, "script_args": {}}


def test_script_args_are_checked_before_queueing(runtime):
    fields = {**COMMON, "script_name": "Prompt matrix", "script_args": {"margin_size": 900}}
    with pytest.raises(gr.Error, match="margin_size"):
        last(txt2img_tab.generate(runtime, fields))
    fields = {**COMMON, "prompt": "a red|blue circle", "script_name": "Prompt matrix",
              "script_args": {}}
    gallery, *_ = last(txt2img_tab.generate(runtime, fields))
    assert len(gallery) == 3  # the matrix grid and its two pictures


# ---------------------------------------------------------------- cards and gallery


def test_extra_network_cards(runtime):
    lora = runtime.paths.lora_dir / "inkwash.safetensors"
    lora.parent.mkdir(parents=True, exist_ok=True)
    lora.write_bytes(b"not really a lora")  # listed from its name; read only when used
    Image.new("RGB", (300, 200), "orange").save(lora.with_suffix(".preview.png"))
    embedding = runtime.paths.embeddings_dir / "bad-hands.pt"
    embedding.parent.mkdir(parents=True, exist_ok=True)
    embedding.write_bytes(b"x")
    runtime.networks.loras.refresh()
    cards = {card.kind: card for card in EN.list_cards(runtime)}
    assert cards["lora"].value == "<lora:inkwash:1>" and cards["embedding"].value == "bad-hands"
    checkpoints = {card.value for card in EN.list_cards(runtime) if card.kind == "checkpoint"}
    assert checkpoints == {info.title for info in runtime.models.checkpoints()}  # demo too
    assert EN.preview_for(lora) == lora.with_suffix(".preview.png")
    assert EN.preview_for(embedding) is None
    page = EN.cards_html(runtime)
    assert 'data-value="&lt;lora:inkwash:1&gt;"' in page
    assert page.count("data:image/png;base64,") == 1
    with Image.open(lora.with_suffix(".preview.png")) as preview:
        assert preview.size == (300, 200)  # the file itself is left alone


def test_gallery_save_zip_and_send(runtime, tmp_path):
    gallery, _, _, results = last(txt2img_tab.generate(runtime, {**COMMON, "batch_size": 2}))
    paths = []
    for number, image in enumerate(gallery):
        path = tmp_path / f"g{number}.png"
        image.save(path, pnginfo=_info(image.info["parameters"]))
        paths.append((str(path), None))
    results = {**results, "selected": 2}
    saved = R.save_selected(runtime, paths, results)["value"][0]
    with Image.open(saved) as image:
        assert "Seed: 6" in image.info["parameters"]
    assert str(runtime.paths.output_dir(R.SAVE_DIR)) in saved
    archive = R.zip_gallery(runtime, paths)["value"][0]
    assert len(zipfile.ZipFile(archive).namelist()) == 3
    assert "txt2img-images" in R.folder_html(runtime, results, "outputs/txt2img-images")
    picture_, text = R.selected_image(paths, results)
    assert picture_.size == (64, 64) and "Seed: 6" in text
    with pytest.raises(gr.Error, match="no image"):
        R.selected_image([], results)
    values = paste_values(runtime, text, R.empty_results(), names=I.IMG2IMG_FIELDS)
    assert values["seed"] == 6 and values["prompt"] == "a red circle"


def _info(text):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    return info


def test_page_has_both_tabs_and_send_buttons(runtime):
    config = TestClient(create_app(runtime)).get("/config").json()
    props = {c.get("props", {}).get("elem_id"): c.get("props", {})
             for c in config["components"]}
    for elem_id in ("img2img_prompt", "img2img_generate", "img2maskimg", "img2img_sketch",
                    "img2img_inpaint_sketch", "img_inpaint_mask", "img2img_batch_input_dir",
                    "img2img_mask_blur", "txt2img_hr_upscaler", "txt2img_enable_refiner",
                    "txt2img_script", "img2img_script", "txt2img_styles",
                    "txt2img_send_to_inpaint", "img2img_denoising_strength"):
        assert elem_id in props, elem_id
    for target in ("img2img", "inpaint", "extras"):
        assert props[f"txt2img_send_to_{target}"]["visible"] is True


def test_a_send_button_without_a_target_is_hidden(runtime):
    from webui.send_to import wire_send

    with gr.Blocks() as blocks:
        with gr.Tabs() as tabs:
            with gr.Tab("txt2img", id="txt2img"):
                panel = txt2img_tab.build(runtime)
        wire_send(panel, {}, tabs)
    shown = {c["props"].get("elem_id"): c["props"]["visible"]
             for c in blocks.config["components"] if "send_to" in str(c["props"].get("elem_id"))}
    assert shown == {f"txt2img_send_to_{name}": False for name in ("img2img", "inpaint", "extras")}
