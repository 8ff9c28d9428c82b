"""Every /sdapi/v1 route through FastAPI's TestClient, checking fields and defaults."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.infotext import parse_infotext
from tests.helpers.api_runtime import SMALL, decode_png, make_runtime, png_base64


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("api-data"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def txt2img(client, **fields):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    body = response.json()
    return body, json.loads(body["info"])


def test_txt2img_defaults_and_response_shape(client):
    body, info = txt2img(client, prompt="a cat", seed=42)
    params = body["parameters"]
    assert params["sampler_index"] == "Euler" and params["sampler_name"] is None
    assert params["cfg_scale"] == 7.0 and params["seed"] == 42 and params["save_images"] is False
    assert params["send_images"] is True and params["denoising_strength"] is None
    assert len(body["images"]) == 1
    image = decode_png(body["images"][0])
    assert image.size == (64, 64)
    parsed = parse_infotext(image.info["parameters"])
    assert parsed["Sampler"] == "Euler" and parsed["Seed"] == "42" and parsed["Steps"] == "2"
    assert parsed["CFG scale"] == "7.0" and parsed["Model"] == "alpha"
    expected_keys = {"prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed",
                     "all_seeds", "subseed", "all_subseeds", "subseed_strength", "width",
                     "height", "sampler_name", "cfg_scale", "steps", "batch_size",
                     "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
                     "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h",
                     "denoising_strength", "extra_generation_params", "index_of_first_image",
                     "infotexts", "styles", "job_timestamp", "clip_skip",
                     "is_using_inpainting_conditioning", "version"}
    assert set(info) == expected_keys
    assert info["sampler_name"] == "Euler" and info["all_seeds"] == [42]
    assert info["sd_model_name"] == "alpha" and len(info["sd_model_hash"]) == 10
    assert info["infotexts"][0] == image.info["parameters"] and info["index_of_first_image"] == 0


def test_empty_body_defaults_are_a1111s(client, runtime):
    from modules.api.generation import to_params
    from modules.api.schemas import Txt2ImgRequest

    params = to_params(Txt2ImgRequest(), runtime)
    assert (params.sampler_name, params.scheduler, params.steps, params.cfg_scale) == (
        "Euler", "Automatic", 50, 7.0)
    assert (params.width, params.height, params.seed, params.batch_size) == (512, 512, -1, 1)
    assert params.do_not_save_samples is True


def test_batch_returns_grid_first(client):
    body, info = txt2img(client, prompt="x", seed=5, batch_size=2)
    assert len(body["images"]) == 3 and info["index_of_first_image"] == 1
    assert decode_png(body["images"][0]).size == (128, 64)
    assert info["all_seeds"] == [5, 6] and len(info["infotexts"]) == 3


def test_send_images_false_and_save_images(client, runtime):
    body, _ = txt2img(client, prompt="x", seed=1, send_images=False)
    assert body["images"] == []
    outputs = runtime.paths.output_dir(runtime.settings.current.outdir_txt2img_samples)
    before = len(list(outputs.rglob("*.png"))) if outputs.exists() else 0
    txt2img(client, prompt="x", seed=1, save_images=True)
    assert len(list(outputs.rglob("*.png"))) == before + 1


def test_legacy_sampler_name_and_sampler_errors(client):
    _, info = txt2img(client, sampler_name="DPM++ 2M Karras", seed=1)
    assert info["sampler_name"] == "DPM++ 2M"
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "sampler_name": "Nope"})
    assert response.status_code == 400 and response.json()["detail"].startswith("Sampler not found")


def test_infotext_fills_unset_fields_only(client):
    text = ("a dog\nNegative prompt: ugly\n"
            "Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: 9, Size: 64x64")
    body, info = txt2img(client, infotext=text, steps=2)
    assert info["prompt"] == "a dog" and info["negative_prompt"] == "ugly"
    assert info["seed"] == 9 and info["sampler_name"] == "Euler a" and info["cfg_scale"] == 5.0
    assert info["steps"] == 2  # set explicitly by the client, so the infotext does not win


def test_styles(client, runtime):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "styles": ["missing"]})
    assert response.status_code == 422 and "missing" in response.json()["detail"]
    runtime.paths.styles_file.write_text(
        "name,prompt,negative_prompt\nfancy,{prompt} in gold,blurry\n", encoding="utf-8")
    _, info = txt2img(client, prompt="a ring", styles=["fancy"], seed=2)
    assert info["prompt"] == "a ring in gold" and info["negative_prompt"] == "blurry"
    assert client.get("/sdapi/v1/prompt-styles").json() == [
        {"name": "fancy", "prompt": "{prompt} in gold", "negative_prompt": "blurry"}]
    runtime.paths.styles_file.unlink()


def test_override_settings_apply_to_one_job(client, runtime):
    _, info = txt2img(client, seed=3, override_settings={"sd_model_checkpoint": "beta",
                                                          "CLIP_stop_at_last_layers": 2})
    assert info["sd_model_name"] == "beta" and info["clip_skip"] == 2
    _, after = txt2img(client, seed=3)
    assert after["sd_model_name"] == "alpha" and after["clip_skip"] == 1
    assert runtime.settings.current.CLIP_stop_at_last_layers == 1
    bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": {"bogus": 1}})
    assert bad.status_code == 422 and "bogus" in bad.json()["detail"]
    missing = client.post("/sdapi/v1/txt2img",
                          json={**SMALL, "override_settings": {"sd_model_checkpoint": "../x"}})
    assert missing.status_code == 404 and "../x" in missing.json()["detail"]


@pytest.mark.parametrize("fields, status, needle", [
    ({"script_name": "No such script"}, 422, "Script 'No such script' not found"),
    ({"alwayson_scripts": {"adetailer": {"args": []}}}, 422, "always on script adetailer"),
    ({"enable_hr": True}, 422, "denoising_strength"),
    ({"refiner_checkpoint": "nowhere", "refiner_switch_at": 0.5}, 404, "nowhere"),
    ({"refiner_checkpoint": "alpha"}, 422, "refiner_switch_at"),
    ({"firstpass_image": png_base64(Image.new("RGB", (64, 64)))}, 422, "firstpass_image"),
    ({"restore_faces": True}, 422, "codeformer-v0.1.0.pth"),
    ({"width": 65}, 422, "width"),
    ({"steps": 0}, 422, "steps"),
    ({"cfg_scale": "high"}, 422, "cfg_scale"),
])
def test_txt2img_refusals(client, fields, status, needle):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **fields})
    assert response.status_code == status
    body = response.json()
    assert needle in json.dumps(body)
    if status != 422 or "error" in body:
        assert set(body) >= {"error", "detail"}


def test_interrogate_without_models_names_the_folder(client):
    # the whole path with models installed: tests/test_interrogate.py
    response = client.post("/sdapi/v1/interrogate", json={"image": "", "model": "clip"})
    assert response.status_code == 404 and response.json()["detail"] == "Image not found"
    image = png_base64(Image.new("RGB", (8, 8)))
    response = client.post("/sdapi/v1/interrogate", json={"image": image, "model": "clip"})
    assert response.status_code == 404 and "models/BLIP/" in response.json()["detail"]


def test_png_info_round_trip(client):
    body, _ = txt2img(client, prompt="hello, world", seed=11)
    for image_text in (body["images"][0], "data:image/png;base64," + body["images"][0]):
        info = client.post("/sdapi/v1/png-info", json={"image": image_text}).json()
        assert info["info"].startswith("hello, world\nSteps: 2")
        assert info["parameters"]["Seed"] == "11" and info["parameters"]["Prompt"] == "hello, world"
    plain = client.post("/sdapi/v1/png-info", json={"image": png_base64(Image.new("RGB", (8, 8)))})
    assert plain.json() == {"info": "", "items": {}, "parameters": {}}
    assert client.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""
    assert client.post("/sdapi/v1/png-info", json={"image": "bm90IGFuIGltYWdl"}).status_code == 400


def test_progress_idle_and_interrupt_skip(client):
    progress = client.get("/sdapi/v1/progress", params={"skip_current_image": True}).json()
    assert progress["progress"] == 0 and progress["eta_relative"] == 0
    assert progress["state"]["job_count"] == 0 and progress["current_image"] is None
    assert set(progress["state"]) >= {"skipped", "interrupted", "job", "job_count",
                                      "job_timestamp", "job_no", "sampling_step", "sampling_steps"}
    assert client.post("/sdapi/v1/interrupt").json() == {}
    assert client.post("/sdapi/v1/skip").json() is None


def test_internal_progress_for_unknown_and_finished_task(client):
    unknown = client.post("/internal/progress", json={"id_task": "nope"}).json()
    assert unknown["active"] is False and unknown["completed"] is False
    assert unknown["textinfo"] == "Waiting..."
    txt2img(client, seed=1, force_task_id="task(abc)")
    done = client.post("/internal/progress", json={"id_task": "task(abc)"}).json()
    assert done["completed"] is True and done["active"] is False


def test_options_round_trip_and_errors(client, runtime):
    options = client.get("/sdapi/v1/options").json()
    assert set(options) >= {"samples_save", "CLIP_stop_at_last_layers", "sd_model_checkpoint"}
    assert options["jpeg_quality"] == 80
    assert client.post("/sdapi/v1/options", json={"jpeg_quality": 55}).json() is None
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 55
    saved = json.loads(runtime.paths.config_file.read_text())
    assert saved["jpeg_quality"] == 55
    for body, needle in (({"no_such_option": 1}, "no_such_option"),
                         ({"jpeg_quality": "high"}, "jpeg_quality")):
        response = client.post("/sdapi/v1/options", json=body)
        assert response.status_code == 422 and needle in response.json()["detail"]
    restricted = client.post("/sdapi/v1/options", json={"api_enable_requests": False})
    assert restricted.status_code == 403
    assert client.get("/sdapi/v1/options").json()["jpeg_quality"] == 55
    client.post("/sdapi/v1/options", json={"jpeg_quality": 80})


def test_options_checkpoint_switch(client, runtime):
    missing = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "gamma"})
    assert missing.status_code == 404 and "gamma" in missing.json()["detail"]
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "beta"}).status_code == 200
    assert runtime.models.current.info.model_name == "beta"
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("beta")
    client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "alpha"})
    assert runtime.models.current.info.model_name == "alpha"


def test_listings(client):
    samplers = client.get("/sdapi/v1/samplers").json()
    euler = next(s for s in samplers if s["name"] == "Euler")
    assert euler == {"name": "Euler", "aliases": ["k_euler"], "options": {}}
    assert next(s for s in samplers if s["name"] == "DPM++ 2M")["options"]["scheduler"] == "karras"
    schedulers = client.get("/sdapi/v1/schedulers").json()
    karras = next(s for s in schedulers if s["name"] == "karras")
    assert karras == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                      "need_inner_model": False}
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert {"None", "Lanczos", "Nearest"} <= set(names)
    assert client.get("/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}
    models = client.get("/sdapi/v1/sd-models").json()
    # the shipped demo model stays listed, last, under a --data-dir of its own
    assert [m["model_name"] for m in models] == ["alpha", "beta", "easel-demo"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    scripts = client.get("/sdapi/v1/scripts").json()
    assert "x/y/z plot" in scripts["txt2img"] and "prompt matrix" in scripts["img2img"]
    for path in ("sd-vae", "hypernetworks", "face-restorers", "realesrgan-models", "loras",
                 "script-info", "extensions", "prompt-styles"):
        assert isinstance(client.get(f"/sdapi/v1/{path}").json(), list), path


def test_refresh_unload_reload(client, runtime):
    for path in ("refresh-checkpoints", "refresh-vae", "refresh-embeddings", "refresh-loras"):
        assert client.post(f"/sdapi/v1/{path}").json() is None
    txt2img(client, seed=1)
    assert client.post("/sdapi/v1/unload-checkpoint").json() == {}
    assert runtime.models.current is None
    assert client.post("/sdapi/v1/reload-checkpoint").json() == {}
    assert runtime.models.current is not None


def test_memory_and_cmd_flags(client):
    memory = client.get("/sdapi/v1/memory").json()
    assert set(memory["ram"]) == {"free", "used", "total"} and memory["ram"]["total"] > 0
    assert "error" in memory["cuda"] or "system" in memory["cuda"]
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["nowebui"] is True and flags["port"] == 7861 and "api_auth" in flags


def test_txt2img_hires_on_a_finished_picture_and_a_refiner(client):
    first, _ = txt2img(client, prompt="a cat", seed=5)
    body, info = txt2img(client, prompt="a cat", seed=5, enable_hr=True, hr_scale=2,
                         denoising_strength=0.5, hr_upscaler="Lanczos",
                         firstpass_image=first["images"][0])
    assert decode_png(body["images"][0]).size == (128, 128)
    body, info = txt2img(client, prompt="a cat", seed=5, refiner_checkpoint="beta",
                         refiner_switch_at=0.5)
    parsed = parse_infotext(info["infotexts"][0])
    assert parsed["Refiner"].startswith("beta") and parsed["Refiner switch at"] == "0.5"
    assert body["images"][0] != first["images"][0]
