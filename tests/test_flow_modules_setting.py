"""Forge's `forge_additional_modules` setting: names inside the part folders, or a 422.

The setting lists separate VAE / text encoder files that complete (or replace) the parts
of an SD3 / Flux checkpoint. Clients give file names; the server resolves them inside
models/text_encoder/, models/CLIP/ and models/VAE/ and refuses anything else (absolute
paths, `..`, unknown names) naming the setting, through /options and override_settings.
Forge's infotext `Module 1: ae, Module 2: clip_l` maps back to the setting.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from modules.api.app import create_api_app
from modules.pipeline.infotext_fields import infotext_to_settings_overrides
from modules.settings import SettingsError, validate
from tests.helpers.api_runtime import SMALL, make_runtime
from tests.helpers.flow_files import random_parts

SETTING = "forge_additional_modules"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("modules-data")
    folder = data / "models" / "text_encoder"
    folder.mkdir(parents=True)
    save_file(random_parts("flux")["clip_l"], str(folder / "clip_l.safetensors"),
              metadata={"easel.text_encoder": "clip_l"})
    runtime = make_runtime(data)
    yield TestClient(create_api_app(runtime))
    runtime.jobs.stop()


def test_setting_is_a_list_of_names():
    assert validate(SETTING, ["ae.safetensors", "clip_l"]) == ("ae.safetensors", "clip_l")
    for bad in ("ae.safetensors", [1], ["x"] * 17):
        with pytest.raises(SettingsError, match=SETTING):
            validate(SETTING, bad)


def test_infotext_modules_become_the_setting():
    parsed = {"Steps": 20, "Module 2": "clip_l", "Module 1": "ae", "Module 3": "t5xxl_fp16"}
    assert infotext_to_settings_overrides(parsed)[SETTING] == ("ae", "clip_l", "t5xxl_fp16")
    assert SETTING not in infotext_to_settings_overrides({"Steps": 20})


@pytest.mark.parametrize("name", ["/etc/passwd", "../text_encoder/clip_l.safetensors",
                                  "C:\\models\\clip_l.safetensors", "nothing-here"])
def test_paths_and_unknown_names_are_refused(client, name):
    response = client.post("/sdapi/v1/options", json={SETTING: [name]})
    assert response.status_code == 422 and SETTING in response.text
    body = {"prompt": "x", **SMALL, "override_settings": {SETTING: [name]}}
    response = client.post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 422 and SETTING in response.text
    assert "/etc" not in response.text.replace(name, "")


def test_a_file_in_the_folder_is_accepted(client):
    response = client.post("/sdapi/v1/options", json={SETTING: ["clip_l.safetensors"]})
    assert response.status_code == 200, response.text
    assert client.get("/sdapi/v1/options").json()[SETTING] == ["clip_l.safetensors"]
    response = client.post("/sdapi/v1/options", json={SETTING: []})
    assert response.status_code == 200


def test_sd_modules_lists_the_parts(client):
    listed = client.get("/sdapi/v1/sd-modules").json()
    assert [item["model_name"] for item in listed] == ["clip_l.safetensors"]
