"""sd-webui-controlnet's API routes that typed clients call (issue #17, item 10).

`/controlnet/control_types` (was 404), `module_list?alias_names=true` and the
extension's module labels accepted wherever a module is named.
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from tests.helpers.api_runtime import decode_png, make_runtime, png_base64
from tests.helpers.controlnet import use_extension_package

AUTH = {"Authorization": "Basic " + base64.b64encode(b"user:pw").decode()}
FILES = ("control_sd15_canny.safetensors", "control_v11p_sd15_canny.safetensors",
         "control_v11f1p_sd15_depth.pth", "t2iadapter_color_sd14v1.pth",
         "ip-adapter_sd15.safetensors", "ip-adapter-plus_sd15.bin")
ENTRY_KEYS = {"module_list", "model_list", "default_option", "default_model"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("cn_routes")
    folder = data / "models" / "ControlNet"
    folder.mkdir(parents=True)
    for index, name in enumerate(FILES):  # listing reads names and hashes only
        (folder / name).write_bytes(bytes([index]) * 4096)
    runtime = make_runtime(data, "--api-auth", "user:pw")
    yield TestClient(create_api_app(runtime))
    runtime.jobs.stop()


def get(client, path: str):
    response = client.get(path, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def test_control_types_groups_modules_and_models(client):
    assert client.get("/controlnet/control_types").status_code == 401  # behind --api-auth
    types = get(client, "/controlnet/control_types")["control_types"]
    models = get(client, "/controlnet/model_list")["model_list"]
    modules = get(client, "/controlnet/module_list")["module_list"]
    assert all(set(entry) == ENTRY_KEYS for entry in types.values())
    everything = types["All"]
    assert everything["model_list"] == ["None", *models]
    assert everything["module_list"][:2] == ["none", "invert"]
    assert sorted(everything["module_list"]) == sorted(modules)
    assert (everything["default_option"], everything["default_model"]) == ("none", "None")
    canny = types["Canny"]
    assert canny["module_list"] == ["none", "canny", "invert"]
    assert [m.split(" [")[0] for m in canny["model_list"]] == [
        "None", "control_sd15_canny", "control_v11p_sd15_canny"]
    assert canny["default_option"] == "canny"
    assert canny["default_model"].startswith("control_v11p_sd15_canny [")
    assert types["Depth"]["default_option"] == "depth_midas"
    assert types["Depth"]["default_model"].startswith("control_v11f1p_sd15_depth [")
    shuffle = types["Shuffle"]  # no shuffle model: every model offered, default "None"
    assert shuffle["model_list"] == ["None", *models] and shuffle["default_model"] == "None"
    assert "color" in types["T2I-Adapter"]["module_list"]  # by its label t2ia_color_grid
    assert types["T2I-Adapter"]["default_model"].startswith("t2iadapter_color_sd14v1 [")
    assert {"Tile/Blur", "Scribble/Sketch", "Inpaint", "InstructP2P"} <= set(types)
    assert not {"Recolor", "Revision", "Reference"} & set(types)


def test_adapters_are_listed_as_the_extension_lists_them(client):
    models = get(client, "/controlnet/model_list")["model_list"]
    assert [m.split(" [")[0] for m in models if "adapter" in m] == [
        "ip-adapter-plus_sd15", "ip-adapter_sd15", "t2iadapter_color_sd14v1"]
    clip = ["ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter_clip_sdxl_plus_vith"]
    modules = get(client, "/controlnet/module_list")
    assert {"pidinet_sketch", "clip_vision", *clip} <= set(modules["module_list"])
    assert modules["module_detail"]["ip-adapter_clip_sd15"] == {
        "model_free": False, "sliders": [], "files": []}
    labelled = get(client, "/controlnet/module_list?alias_names=true")["module_list"]
    assert {"t2ia_sketch_pidi", "t2ia_style_clipvision", "ip-adapter_clip_h",
            "ip-adapter_clip_g", "ip-adapter_clip_sdxl_plus_vith"} <= set(labelled)
    types = get(client, "/controlnet/control_types")["control_types"]
    ip = types["IP-Adapter"]
    assert ip["module_list"] == ["none", *clip]
    assert ip["default_option"] == "ip-adapter_clip_sd15"  # the extension's ip-adapter_clip_h
    assert [m.split(" [")[0] for m in ip["model_list"]] == [
        "None", "ip-adapter-plus_sd15", "ip-adapter_sd15"]
    assert ip["default_model"].startswith("ip-adapter-plus_sd15 [")
    t2i = types["T2I-Adapter"]
    assert {"color", "pidinet_sketch", "clip_vision"} <= set(t2i["module_list"])
    assert t2i["default_option"] == "clip_vision"  # t2ia_style_clipvision, as the extension
    for module in ("ip-adapter_clip_h", "t2ia_style_clipvision"):  # no picture to show
        response = client.post("/controlnet/detect", headers=AUTH, json={
            "controlnet_module": module, "controlnet_input_images": [png_base64(
                Image.new("RGB", (64, 64)))]})
        assert response.status_code == 422 and "Module not supported" in response.text


def test_module_labels_are_listed_and_accepted(client):
    labelled = get(client, "/controlnet/module_list?alias_names=true")
    assert "invert (from white bg & black line)" in labelled["module_list"]
    assert "t2ia_color_grid" in labelled["module_list"] and "color" not in labelled[
        "module_list"]
    assert labelled["module_detail"]["t2ia_color_grid"]["model_free"] is True
    plain = get(client, "/controlnet/module_list?alias_names=false")
    assert "invert" in plain["module_list"] and "invert" in plain["module_detail"]
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, :32] = 255
    body = {"controlnet_module": "invert (from white bg & black line)",
            "controlnet_input_images": [png_base64(Image.fromarray(pixels))],
            "controlnet_processor_res": 64}
    response = client.post("/controlnet/detect", headers=AUTH, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["info"] == "Success" and len(response.json()["images"]) == 1


def test_unit_module_accepts_the_extension_labels_and_keys():
    use_extension_package()
    from easel_controlnet.preprocessors import preprocessor_names
    from easel_controlnet.units import parse_unit

    names = preprocessor_names()
    assert parse_unit({"module": "t2ia_color_grid"}, modules=names).module == "color"
    assert parse_unit({"module": "depth"}, modules=names).module == "depth_midas"
    with pytest.raises(ValueError, match="module: unknown preprocessor"):
        parse_unit({"module": "recolor_luminance"}, modules=names)


def test_render_openpose_json_draws_the_pose(client):
    body_points = [0.0] * 54
    body_points[0:3] = [0.5, 0.25, 1.0]  # joint 1 (nose), as fractions of the canvas
    body_points[3:6] = [0.5, 0.5, 1.0]  # joint 2 (neck)
    person = {"pose_keypoints_2d": body_points,
              "face_keypoints_2d": [20 / 64, 60 / 64, 1.0]}
    pixels_person = {"pose_keypoints_2d": [32.0, 16.0, 1.0, 32.0, 32.0, 1.0]}  # in pixels
    for one in (person, pixels_person):
        response = client.post("/controlnet/render_openpose_json", headers=AUTH,
                               json=[{"people": [one], "canvas_width": 64,
                                      "canvas_height": 64}])
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["info"] == "Success" and len(answer["images"]) == 1
        picture = np.asarray(decode_png(answer["images"][0]).convert("RGB"))
        assert picture.shape == (64, 64, 3)
        assert tuple(picture[16, 32]) == (255, 0, 0)  # joint 1's colour
        assert tuple(picture[32, 32]) == (255, 85, 0)  # joint 2's colour
        assert tuple(picture[24, 32]) == (0, 0, 153)  # limb 2-1 in blue, dimmed to 60 %
        assert picture[0:8].max() == 0  # nothing drawn elsewhere
    assert tuple(np.asarray(decode_png(client.post(
        "/controlnet/render_openpose_json", headers=AUTH,
        json=[{"people": [person], "canvas_width": 64, "canvas_height": 64}]
    ).json()["images"][0]))[60, 20]) == (255, 255, 255)  # the face point


def test_render_openpose_json_refuses_bad_input(client):
    url = "/controlnet/render_openpose_json"
    assert client.post(url, headers=AUTH, json=[]).json() == {"info": "No pose data detected."}
    cases = (([{"people": [{"pose_keypoints_2d": [1.0, 2.0]}], "canvas_width": 64,
                "canvas_height": 64}], "pose_keypoints_2d"),
             ([{"people": [], "canvas_width": 100000, "canvas_height": 64}], "canvas_width"),
             ([{"people": []}] * 17, "17"))
    for body, named in cases:
        response = client.post(url, headers=AUTH, json=body)
        assert response.status_code == 422 and named in response.text, response.text
