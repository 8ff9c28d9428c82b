"""The web UI without a browser: build the app, call the handlers as events would."""

from __future__ import annotations

import json
import sys
import threading
import time
import types

import gradio as gr
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.imaging.save import read_infotext
from tests.helpers.webui_runtime import make_runtime
from webui import app as app_module
from webui import fields as F
from webui import progress as P
from webui import widgets
from webui.app import create_app, ui_auth
from webui.tabs import png_info, txt2img
from webui.tabs import settings as settings_tab

FAST = {"width": 64, "height": 64, "steps": 3, "sampler_name": "Euler a",
        "scheduler": "Automatic", "n_iter": 1, "batch_size": 1, "cfg_scale": 7.0,
        "seed": 5, "seed_extras": False, "subseed": -1, "subseed_strength": 0.0,
        "seed_resize_from_w": 0, "seed_resize_from_h": 0, "override_settings": [],
        "prompt": "a red circle", "negative_prompt": "blue"}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("data"))
    yield rt
    rt.jobs.stop()


def run_generate(runtime, **changes):
    updates = list(txt2img.generate(runtime, {**FAST, **changes}))
    return updates[-1]


def test_app_serves_the_page_and_config(runtime):
    client = TestClient(create_app(runtime))
    assert client.get("/").status_code == 200
    config = client.get("/config").json()
    ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
    for elem_id in ("txt2img_prompt", "txt2img_generate", "txt2img_gallery",
                    "setting_sd_model_checkpoint", "quick_CLIP_stop_at_last_layers", "quick_sd_vae",
                    "quick_forge_additional_modules",
                    "txt2img_upscale",
                    "pnginfo_image", "settings_search", "setting_samples_format"):
        assert elem_id in ids


def test_checkpoint_dropdown_lists_titles(runtime):
    titles = widgets.checkpoint_titles(runtime)
    assert len(titles) == 2 and titles[0].startswith("easel-demo")  # shipped, always listed
    assert titles[1].startswith("tiny.safetensors")
    update = widgets.select_checkpoint(runtime, titles[1])
    assert update["value"] == runtime.models.current.info.title
    assert runtime.settings.current.sd_model_checkpoint == update["value"]
    with pytest.raises(gr.Error, match="Stable Diffusion checkpoint"):
        widgets.select_checkpoint(runtime, "missing-model")


def test_generate_returns_images_with_infotext(runtime):
    gallery, info_html, progress, results = run_generate(runtime, batch_size=2)
    assert [image.size for image in gallery] == [(128, 64), (64, 64), (64, 64)]  # grid first
    assert "a red circle" in info_html and "Steps: 3" in info_html and "Seed: 5" in info_html
    assert results["seeds"] == [5, 5, 6]
    assert gallery[2].info["parameters"] == results["infotexts"][2]
    assert "Seed: 6" in results["infotexts"][2]
    assert "easel-idle" in progress
    assert txt2img.reuse_seed({**results, "selected": 2}, "seeds") == 6
    gallery, _, _, results = run_generate(runtime)
    assert len(gallery) == 1 and results["seeds"] == [5]


def test_validation_errors_name_the_field(runtime):
    with pytest.raises(gr.Error, match="Width: 65 is not a multiple of 8"):
        run_generate(runtime, width=65)
    with pytest.raises(gr.Error, match="valid samplers"):
        run_generate(runtime, sampler_name="No such sampler")


def test_variation_fields_only_count_with_extra_checked():
    params = F.params_from_fields({**FAST, "subseed": 9, "subseed_strength": 0.5})
    assert params.subseed_strength == 0.0 and params.subseed == -1
    params = F.params_from_fields({**FAST, "seed_extras": True, "subseed": 9.0,
                                   "subseed_strength": 0.5})
    assert params.subseed == 9 and params.subseed_strength == 0.5


def test_paste_fills_every_field(runtime):
    text = ("a cat\nNegative prompt: a dog\nSteps: 7, Sampler: DPM++ 2M Karras, CFG scale: 4.5, "
            "Seed: 1234, Size: 96x128, Model hash: 0123456789, Clip skip: 2, "
            "Variation seed: 77, Variation seed strength: 0.25")
    values = txt2img.paste_values(runtime, text, txt2img.empty_results())
    assert values["prompt"] == "a cat" and values["negative_prompt"] == "a dog"
    assert (values["steps"], values["cfg_scale"], values["seed"]) == (7, 4.5, 1234)
    assert (values["sampler_name"], values["scheduler"]) == ("DPM++ 2M", "Karras")
    assert (values["width"], values["height"]) == (96, 128)
    assert values["seed_extras"] and values["subseed"] == 77
    assert "Clip skip: 2" in values["override_settings"]
    assert any(e.startswith("Model hash") for e in values["override_settings"])
    updates = txt2img.updates_for(values)
    assert len(updates) == len(F.FIELDS)
    assert updates[F.FIELDS.index("steps")] == 7
    params = F.params_from_fields({**FAST, **values, "override_settings": ["Clip skip: 2"]})
    assert params.override_settings == {"CLIP_stop_at_last_layers": 2}


def test_paste_with_empty_prompt_uses_last_generation(runtime):
    results = {**txt2img.empty_results(), "infotexts": ["x\nSteps: 9, Seed: 3, Size: 64x64"]}
    assert txt2img.paste_values(runtime, "", results)["steps"] == 9
    assert txt2img.paste_values(runtime, "", txt2img.empty_results()) == {}


def test_token_counter(runtime):
    assert txt2img.token_counter(runtime, "", 20) == "0/75"
    assert txt2img.token_counter(runtime, "a red circle", 20) == "3/75"
    assert txt2img.token_counter(runtime, "word " * 80, 20) == "80/150"


def test_settings_apply_persists_and_names_bad_fields(runtime, tmp_path):
    rt = make_runtime(tmp_path, load=False)
    values = dict(zip(rt.settings.current.names(), settings_tab.current_values(rt)))
    out = settings_tab.apply_settings(rt, {**values, "jpeg_quality": 55, "samples_format": "jpg"})
    assert "2 settings changed" in out[0]
    saved = json.loads(rt.paths.config_file.read_text())
    assert saved["jpeg_quality"] == 55 and saved["samples_format"] == "jpg"
    with pytest.raises(gr.Error, match="Quality for saved jpeg"):
        settings_tab.apply_settings(rt, {**values, "jpeg_quality": 500})
    assert json.loads(rt.paths.config_file.read_text())["jpeg_quality"] == 55


def test_settings_search_hides_other_settings():
    updates = settings_tab.search_updates("clip skip")
    names = list(settings_tab.Settings.names())
    visible = [n for n, u in zip(names, updates) if u["visible"]]
    assert visible == ["CLIP_stop_at_last_layers"]
    assert all(u["visible"] for u in settings_tab.search_updates("")[: len(names)])


def test_quick_setting_goes_through_the_store(tmp_path):
    rt = make_runtime(tmp_path, load=False)
    assert widgets.apply_quick_setting(rt, "CLIP_stop_at_last_layers", 2) == 2
    assert json.loads(rt.paths.config_file.read_text())["CLIP_stop_at_last_layers"] == 2
    with pytest.raises(gr.Error, match="Clip skip"):
        widgets.apply_quick_setting(rt, "CLIP_stop_at_last_layers", 40)


def test_png_info_reads_a_generated_image(runtime, tmp_path):
    gallery, *_ = run_generate(runtime)
    path = tmp_path / "x.png"
    gallery[0].save(path, pnginfo=_pnginfo(gallery[0].info["parameters"]))
    text, other = png_info.read_info(str(path))
    assert text.startswith("a red circle") and "Steps: 3" in text
    assert read_infotext(Image.open(path)) == text
    assert png_info.read_info(None) == ("", "")


def _pnginfo(text):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    info.add_text("Software", "test")
    return info


def test_progress_text_while_running(runtime):
    from modules.jobs import Job, Progress

    job = Job(id="j", task=lambda: None)
    assert P.progress_text(runtime, job).startswith("Waiting")
    job.started = 1.0
    job.progress = Progress(step=3, total_steps=20, job_no=1, job_count=2)
    assert P.progress_text(runtime, job).startswith("Batch 2/2, Step 3/20")
    assert 'data-percent="57"' in P.progress_html(runtime, job)


def test_gradio_auth_protects_the_ui(tmp_path):
    auth_file = tmp_path / "auth.txt"
    auth_file.write_text("bob:pw2\ncarol:pw3,dan:pw4\n")
    rt = make_runtime(tmp_path, "--gradio-auth", "alice:pw1", "--gradio-auth-path",
                      str(auth_file), load=False)
    rt.ready.set()
    assert ui_auth(rt.args) == [("alice", "pw1"), ("bob", "pw2"), ("carol", "pw3"),
                                ("dan", "pw4")]
    client = TestClient(create_app(rt))
    assert client.get("/config").status_code == 401
    assert client.post("/login", data={"username": "bob", "password": "nope"}).status_code >= 400
    assert client.post("/login", data={"username": "bob", "password": "pw2"}).status_code == 200
    assert client.get("/config").status_code == 200


def test_api_flag_registers_routes_before_the_ui(tmp_path, monkeypatch):
    calls = []

    def register_api(app, runtime):
        calls.append(runtime)
        app.get("/sdapi/v1/ping")(lambda: {"ok": True})

    fake = types.ModuleType("modules.api.app")
    fake.register_api = register_api
    monkeypatch.setitem(sys.modules, "modules.api.app", fake)
    rt = make_runtime(tmp_path, "--api", load=False)
    rt.ready.set()
    client = TestClient(create_app(rt))
    assert calls == [rt]
    assert client.get("/sdapi/v1/ping").json() == {"ok": True}



def test_settings_widgets_follow_handler_order(runtime):
    with gr.Blocks():
        built = settings_tab.build(runtime)
    names = settings_tab.Settings.names()
    assert [w.label for w in built.widget_list()] == [
        settings_tab.Settings.describe(n)["label"] for n in names]
    assert [w.value for w in built.widget_list()] == settings_tab.current_values(runtime)


def test_page_is_served_before_the_model_loads(tmp_path):
    rt = make_runtime(tmp_path, load=False)
    started = time.monotonic()
    client = TestClient(create_app(rt))
    assert client.get("/").status_code == 200
    assert time.monotonic() - started < 5
    assert not rt.ready.is_set() and rt.models.current is None
    assert txt2img.token_counter(rt, "a cat", 20) == "\u2013/75"
    assert app_module.model_defaults(rt, 512, 512, built_size=512) == [gr.skip()] * 4
    loader = threading.Timer(0.5, lambda: (rt.models.load_initial(), rt.ready.set()))
    loader.start()
    gallery, info_html, _, _ = run_generate(rt)  # waits for the model, then generates
    loader.join()
    rt.jobs.stop()
    assert len(gallery) == 1 and "Steps: 3" in info_html
    defaults = app_module.model_defaults(rt, 512, 96, built_size=512)
    assert defaults[1] == 64 and defaults[2] == gr.skip()  # a side the user changed is kept


def test_generate_streams_progress_and_previews(runtime, monkeypatch):
    from modules.jobs import Progress
    from modules.pipeline.params import GenerationResult

    preview = Image.new("RGB", (8, 8), "red")

    def fake_txt2img(rt, params):
        for step in range(1, 4):
            time.sleep(txt2img.POLL_SECONDS * 1.5)
            yield Progress(step=step, total_steps=3, preview=preview if step == 2 else None)
        return GenerationResult(images=[preview], infotexts=["x\nSteps: 3"], seeds=[1],
                                subseeds=[1], prompts=["x"], negative_prompts=[""],
                                warnings=["something was ignored"])

    from modules.pipeline.submit import GENERATIONS

    monkeypatch.setitem(GENERATIONS, "txt2img", fake_txt2img)  # what the UI submits by name
    warned = []
    monkeypatch.setattr(gr, "Warning", warned.append)
    updates = list(txt2img.generate(runtime, FAST))
    texts = [u[2] for u in updates[:-1]]
    assert any("Step 1/3" in t for t in texts) and any("Step 2/3" in t for t in texts)
    assert [u[0] for u in updates[:-1] if isinstance(u[0], list)] == [[preview]]
    assert warned == ["something was ignored"]
    assert updates[-1][3]["seeds"] == [1]


def test_real_api_beside_the_ui(tmp_path):
    rt = make_runtime(tmp_path, "--api", "--gradio-auth", "alice:pw1", load=False)
    rt.ready.set()
    client = TestClient(create_app(rt))
    assert client.get("/sdapi/v1/samplers").status_code == 401  # the API follows the UI login
    samplers = client.get("/sdapi/v1/samplers", auth=("alice", "pw1"))
    assert samplers.status_code == 200
    assert "DPM++ 2M" in [s["name"] for s in samplers.json()]
    assert client.get("/config").status_code == 401
    rt.jobs.stop()


def test_vae_quick_setting_lists_choices_and_saves(runtime, tmp_path):
    vae_dir = runtime.paths.vae_dir
    vae_dir.mkdir(parents=True, exist_ok=True)
    (vae_dir / "kl-f8.safetensors").write_bytes(b"")  # listed by name, never read here
    try:
        assert widgets.vae_choices(runtime)[:2] == ["Automatic", "None"]
        assert "kl-f8.safetensors" in widgets.vae_choices(runtime)
        assert widgets.apply_quick_setting(runtime, "sd_vae", "None") == "None"
        assert runtime.settings.current.sd_vae == "None"
    finally:
        widgets.apply_quick_setting(runtime, "sd_vae", "Automatic")
        (vae_dir / "kl-f8.safetensors").unlink()


def test_upscale_button_runs_hires_on_the_selected_image(runtime, tmp_path):
    """✨ (A1111's upscale button): the selected picture goes through the hires pass with the
    panel's hires settings and its own seed; the first pass is not run again."""
    gallery, _, _, results = run_generate(runtime, seed=9)
    path = tmp_path / "selected.png"
    gallery[0].save(path)
    as_sent = [(str(path), None)]  # what Gradio hands a handler for a gallery input
    hires = {"enable_hr": False, "denoising_strength": 0.4, "hr_scale": 2.0,
             "hr_upscaler": "Lanczos", "hr_second_pass_steps": 2}
    updates = list(txt2img.upscale_selected(runtime, {**FAST, **hires, "seed": 1}, as_sent,
                                            results))
    upscaled_gallery, _, _, upscaled = updates[-1]
    assert upscaled["seeds"] == [9]
    assert upscaled_gallery[0].size == (128, 128)
    with pytest.raises(gr.Error):
        list(txt2img.upscale_selected(runtime, {**FAST, **hires}, [], results))
