"""Hires fix on a tiny random SD1 checkpoint, and the generation API routes it and
img2img / extras go through.

Mechanics: the output has the hires size (scale, one resize side, both sides with the
latent cropped), the second pass runs A1111's explicit-step schedule with noise from a
new ImageRNG of the same seeds, and the infotext has the hires keys in A1111's order.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.infotext import parse_infotext
from modules.pipeline.hires import LATENT_MODES, truncate
from modules.pipeline.params import ParamsError, Txt2ImgParams, hires_size
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import decode_png, make_runtime, png_base64

BASE = {"prompt": "a house", "width": 64, "height": 64, "steps": 3, "seed": 5,
        "sampler_name": "Euler", "do_not_save_samples": True}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return make_runtime(tmp_path_factory.mktemp("data"))


def drive(generator):
    events = []
    try:
        while True:
            events.append(next(generator))
    except StopIteration as stop:
        return stop.value, events


def run(runtime, **fields):
    return drive(txt2img(runtime, Txt2ImgParams(**{**BASE, "enable_hr": True,
                                                   "denoising_strength": 0.5, **fields})))


def test_latent_hires_size_steps_and_infotext(runtime):
    result, events = run(runtime, hr_scale=1.5, hr_second_pass_steps=2)
    assert result.images[0].size == (96, 96)
    first = [e for e in events if e.job_no == 0]
    second = [e for e in events if e.job_no == 1]
    assert len(first) == 3 and len(second) == 2  # explicit steps: exactly 2 run
    assert {e.job_count for e in events} == {2}
    text = result.infotexts[0]
    assert "Size: 64x64" in text  # the first pass's size, as A1111
    keys = [part.split(":")[0].strip() for part in text.splitlines()[-1].split(", ")]
    order = ["Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler"]
    assert [k for k in keys if k in order] == order
    parsed = parse_infotext(text)
    assert parsed["Hires upscale"] == "1.5" and parsed["Hires upscaler"] == "Latent"


def test_image_upscaler_resize_box_and_hires_prompt(runtime):
    result, _ = run(runtime, hr_resize_x=96, hr_resize_y=80, hr_upscaler="Lanczos",
                    hr_prompt="a castle", hr_sampler_name="Euler a")
    assert result.images[0].size == (96, 80)
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Hires resize-1"] == "96" and parsed["Hires resize-2"] == "80"
    assert parsed["Hires prompt"] == "a castle" and parsed["Hires sampler"] == "Euler a"
    assert parsed["Hires upscaler"] == "Lanczos"


@pytest.mark.parametrize("mode", sorted(LATENT_MODES))
def test_every_latent_mode_runs(runtime, mode):
    result, _ = run(runtime, hr_upscaler=mode, hr_scale=1.25, hr_second_pass_steps=1)
    assert result.images[0].size == (80, 80)


def test_hires_differs_from_plain_and_is_deterministic(runtime):
    a, _ = run(runtime, hr_scale=1.5, hr_second_pass_steps=1)
    b, _ = run(runtime, hr_scale=1.5, hr_second_pass_steps=1)
    c, _ = run(runtime, hr_scale=1.5, hr_second_pass_steps=1, seed=6)
    assert a.images[0].tobytes() == b.images[0].tobytes() != c.images[0].tobytes()


def test_size_rule_and_truncation():
    p = Txt2ImgParams(width=512, height=768, hr_resize_x=1024, hr_resize_y=1024)
    assert hires_size(p) == (1024, 1536, 0, 64)
    assert hires_size(Txt2ImgParams(width=512, height=768, hr_resize_x=1024)) == (1024, 1536, 0, 0)
    assert hires_size(Txt2ImgParams(width=512, height=768, hr_scale=1.5)) == (768, 1152, 0, 0)
    import torch
    assert truncate(torch.zeros(1, 4, 192, 128), 0, 64).shape[-2:] == (128, 128)


def test_bad_hires_fields_are_named(runtime):
    with pytest.raises(ParamsError, match="denoising_strength"):
        drive(txt2img(runtime, Txt2ImgParams(**BASE, enable_hr=True)))
    with pytest.raises(ParamsError, match="hr_upscaler"):
        run(runtime, hr_upscaler="R-ESRGAN 99x")
    with pytest.raises(ParamsError, match="hr_scale"):
        run(runtime, hr_scale=20)


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def test_api_txt2img_with_enable_hr(client):
    response = client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "width": 64, "height": 64, "steps": 2, "enable_hr": True,
        "denoising_strength": 0.6, "hr_scale": 1.5, "hr_second_pass_steps": 1})
    assert response.status_code == 200, response.text
    body = response.json()
    assert decode_png(body["images"][0]).size == (96, 96)
    assert '"denoising_strength": 0.6' in body["info"]
    missing = client.post("/sdapi/v1/txt2img", json={"enable_hr": True, "width": 64,
                                                     "height": 64, "steps": 2})
    assert missing.status_code == 422 and "denoising_strength" in missing.text


def test_api_img2img_and_inpaint(client):
    image = Image.new("RGB", (64, 64), (120, 60, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    response = client.post("/sdapi/v1/img2img", json={
        "init_images": [png_base64(image)], "mask": png_base64(mask, prefix=True),
        "width": 64, "height": 64, "steps": 2, "denoising_strength": 0.5, "mask_blur": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None
    parsed = parse_infotext(decode_png(body["images"][0]).info["parameters"])
    assert parsed["Mask blur"] == "2" and parsed["Inpaint area"] == "Only masked"
    assert parsed["Masked content"] == "fill" and parsed["Denoising strength"] == "0.5"
    assert client.post("/sdapi/v1/img2img", json={"steps": 2}).status_code == 404
    bad = client.post("/sdapi/v1/img2img", json={"init_images": [png_base64(image)],
                                                 "resize_mode": 9, "steps": 2})
    assert bad.status_code == 422 and "resize_mode" in bad.text


def test_api_extras_and_upscaler_list(client):
    image = Image.new("RGB", (32, 24), (10, 200, 30))
    single = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(image), "upscaler_1": "Lanczos", "upscaling_resize": 2})
    assert single.status_code == 200, single.text
    assert decode_png(single.json()["image"]).size == (64, 48)
    assert "Postprocess upscaler: Lanczos" in single.json()["html_info"]
    batch = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": png_base64(image), "name": "a.png"}] * 2, "resize_mode": 1,
        "upscaling_resize_w": 40, "upscaling_resize_h": 40, "upscaler_1": "Nearest"})
    assert batch.status_code == 200, batch.text
    assert [decode_png(i).size for i in batch.json()["images"]] == [(40, 40)] * 2
    unknown = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(image), "upscaler_1": "nope"})
    assert unknown.status_code == 422
    names = [item["name"] for item in client.get("/sdapi/v1/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"]
