"""The built-in ControlNet extension end to end: txt2img through alwayson_scripts, and its API.

A tiny random SD1 checkpoint and a tiny random ControlNet for it, written to
models/ControlNet/ in the LDM layout (`control_model.` prefix), as a user would drop it.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import decode_png, make_runtime, png_base64
from tests.helpers.checkpoints import finish
from tests.helpers.controlnet import write_tiny_controlnet
from tests.tiny import TINY_SD15

AUTH = {"Authorization": "Basic " + base64.b64encode(b"user:pw").decode()}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("cn")
    write_tiny_controlnet(data / "models" / "ControlNet" / "control_tiny.safetensors",
                          TINY_SD15.unet, scale=0.2)
    rt = make_runtime(data, "--api-auth", "user:pw")
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def picture() -> str:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = 255
    return png_base64(Image.fromarray(pixels))


def run(runtime, *units):
    params = Txt2ImgParams(prompt="a square", seed=11, width=64, height=64, steps=3,
                           sampler_name="Euler", do_not_save_samples=True,
                           alwayson_scripts={"controlnet": {"args": list(units)}} if units else {})
    return finish(txt2img(runtime, params))[0]


def unit(**fields):
    return {"enabled": True, "module": "canny", "model": "control_tiny", "image": picture(),
            "processor_res": 64, **fields}


def test_controlnet_changes_the_image_and_weight_zero_changes_nothing(runtime):
    plain = run(runtime)
    controlled = run(runtime, unit())
    assert controlled.warnings == []
    assert plain.images[0].tobytes() != controlled.images[0].tobytes()
    assert "ControlNet 0: \"Module: canny, Model: control_tiny" in controlled.infotexts[0]
    zero = run(runtime, unit(weight=0.0))
    assert plain.images[0].tobytes() == zero.images[0].tobytes()
    disabled = run(runtime, unit(enabled=False))
    assert plain.images[0].tobytes() == disabled.images[0].tobytes()


def test_units_and_modes_combine(runtime):
    one = run(runtime, unit())
    two = run(runtime, unit(), unit(module="invert", weight=0.7,
                                    control_mode="ControlNet is more important"))
    late = run(runtime, unit(guidance_start=0.6, guidance_end=1.0))
    assert len({one.images[0].tobytes(), two.images[0].tobytes(),
                late.images[0].tobytes()}) == 3


def test_missing_model_is_a_warning_naming_the_unit(runtime):
    result = run(runtime, unit(model="nope [12345678]"))
    assert len(result.images) == 1
    assert any("ControlNet unit 0: model:" in w and "nope" in w for w in result.warnings)


def test_api_txt2img_with_units_and_field_errors(client, runtime):
    body = {"prompt": "a square", "seed": 11, "width": 64, "height": 64, "steps": 3,
            "sampler_name": "Euler",
            "alwayson_scripts": {"ControlNet": {"args": [unit()]}}}
    response = client.post("/sdapi/v1/txt2img", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert decode_png(response.json()["images"][0]).size == (64, 64)
    body["alwayson_scripts"]["ControlNet"]["args"] = [unit(weight="x")]
    bad = client.post("/sdapi/v1/txt2img", json=body, headers=AUTH)
    assert bad.status_code == 422 and "unit_0: weight" in bad.text


def test_routes_respond_with_the_extension_shapes(client):
    assert client.get("/controlnet/version").status_code == 401  # behind --api-auth
    assert client.get("/controlnet/version", headers=AUTH).json() == {"version": 2}
    models = client.get("/controlnet/model_list", headers=AUTH).json()["model_list"]
    assert len(models) == 1 and models[0].startswith("control_tiny [")
    assert len(models[0].split("[")[1].rstrip("]")) == 8
    modules = client.get("/controlnet/module_list", headers=AUTH).json()
    assert {"none", "canny", "depth_midas"} <= set(modules["module_list"])
    assert modules["module_detail"]["canny"]["model_free"] is True
    assert client.get("/controlnet/settings", headers=AUTH).json() == {
        "control_net_unit_count": 3}
    detect = client.post("/controlnet/detect", headers=AUTH, json={
        "controlnet_module": "canny", "controlnet_input_images": [picture()],
        "controlnet_processor_res": 64, "controlnet_threshold_a": 100,
        "controlnet_threshold_b": 200}).json()
    assert detect["info"] == "Success" and len(detect["images"]) == 1
    edges = np.asarray(decode_png(detect["images"][0]))
    assert edges.shape == (64, 64, 3) and edges[32, 14:18].max() == 255
    assert edges[24:40, 24:40].max() == 0
    for body, reason in (({"controlnet_module": "nope", "controlnet_input_images": [picture()]},
                          "not found"),
                         ({"controlnet_module": "canny"}, "No image"),
                         ({"controlnet_module": "depth_midas",
                           "controlnet_input_images": [picture()]}, "dpt_hybrid")):
        response = client.post("/controlnet/detect", headers=AUTH, json=body)
        assert response.status_code == 422 and reason in response.text
