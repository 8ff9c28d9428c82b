"""An API request's `infotext` also fills `alwayson_scripts` for the always-on scripts
whose infotext keys it carries (`Script.infotext_fields`); the request's own entry for a
script wins, whole. Through FastAPI's TestClient with the "Test probe" extension."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from modules.infotext import parse_infotext
from tests.helpers.api_runtime import SMALL, make_runtime
from tests.test_alwayson_ui import TITLE, write_probe_extension

PROBE_TEXT = ("a dog\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 64x64, "
              "Test enabled: True, Test key: 1.25")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(write_probe_extension(tmp_path_factory.mktemp("api-alwayson")))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def post(client, route: str, **fields) -> dict:
    response = client.post(f"/sdapi/v1/{route}", json={**SMALL, **fields})
    assert response.status_code == 200, response.text
    return parse_infotext(json.loads(response.json()["info"])["infotexts"][0])


def test_infotext_fills_alwayson_scripts(client):
    parsed = post(client, "txt2img", infotext=PROBE_TEXT)
    assert parsed["Test key"] == "1.25" and parsed["Test enabled"] == "True"


def test_request_entry_wins_whole(client):
    own = {"test PROBE": {"args": {"strength": 0.5}}}  # enabled defaults to False
    parsed = post(client, "txt2img", infotext=PROBE_TEXT, alwayson_scripts=own)
    assert "Test key" not in parsed
    own = {TITLE: {"args": {"enabled": True, "strength": 0.25}}}
    assert post(client, "txt2img", infotext=PROBE_TEXT, alwayson_scripts=own)["Test key"] == "0.25"


def test_infotext_without_the_keys_leaves_scripts_alone(client):
    parsed = post(client, "txt2img", infotext="a dog\nSteps: 2, Seed: 9, Size: 64x64")
    assert "Test key" not in parsed


def test_img2img_infotext_fills_alwayson_scripts(runtime, client):
    from modules.api.generation import apply_infotext
    from modules.api.schemas import Img2ImgRequest
    from tests.helpers.api_runtime import png_base64

    request = Img2ImgRequest(**SMALL, init_images=["x"], infotext=PROBE_TEXT)
    filled = apply_infotext(request, runtime.settings.current, runtime)
    assert filled.alwayson_scripts == {TITLE: {"args": {"enabled": True, "strength": 1.25}}}
    own = {"other": 1, TITLE.upper(): {"args": {}}}
    request = Img2ImgRequest(**SMALL, init_images=["x"], infotext=PROBE_TEXT,
                             alwayson_scripts=own)
    assert apply_infotext(request, runtime.settings.current, runtime).alwayson_scripts == own
    # The scripts' keys reach the picture: img2img keeps what `process` wrote.
    from PIL import Image

    picture = png_base64(Image.new("RGB", (64, 64), (200, 30, 30)))
    parsed = post(client, "img2img", init_images=[picture], infotext=PROBE_TEXT)
    assert parsed["Test key"] == "1.25" and "Denoising strength" in parsed
