"""Hypothesis-driven bodies for txt2img and options: never a 500, the server stays up.

Every field gets random JSON of any type (NaN and Infinity included, as Python's JSON
encoder sends them). The fields that set the amount of work (size, steps, batch) are
drawn from a short list of small valid values and invalid ones, so examples stay fast.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modules.api.app import create_api_app
from modules.api.schemas import Txt2ImgRequest
from modules.settings import Settings
from tests.helpers.api_runtime import make_runtime

WORK_FIELDS = {"width": [64, 65, 0, "wide", None, [], 3.5],
               "height": [64, -8, "", {}, True],
               "steps": [1, 2, 0, -1, "many", 1.5, None],
               "batch_size": [1, 0, 65, "x"], "n_iter": [1, 0, "x", []]}

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3),
                           max_leaves=6)
other_fields = [name for name in Txt2ImgRequest.model_fields if name not in WORK_FIELDS]


@st.composite
def txt2img_bodies(draw):
    body = {name: draw(json_values) for name in draw(st.lists(st.sampled_from(other_fields),
                                                            unique=True, max_size=8))}
    for name in ("sampler_name", "sampler_index"):
        if name in body and draw(st.booleans()):
            body[name] = draw(st.sampled_from(["Euler", "Euler a", "DPM++ 2M Karras", "LMS"]))
    body.update({name: draw(st.sampled_from(values)) for name, values in WORK_FIELDS.items()})
    return body


@st.composite
def options_bodies(draw):
    keys = st.sampled_from(Settings.names()) | st.text(max_size=12)
    return draw(st.dictionaries(keys, json_values, max_size=4))


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = make_runtime(tmp_path_factory.mktemp("api-fuzz"))
    yield TestClient(create_api_app(runtime))
    runtime.jobs.stop()


def post(client, path: str, body) -> int:
    text = json.dumps(body)  # allow_nan: NaN/Infinity travel as Python sends them
    response = client.post(path, content=text, headers={"content-type": "application/json"})
    assert response.status_code < 500 or response.status_code == 501, response.text
    if response.status_code >= 400:
        payload = response.json()
        assert "detail" in payload
    return response.status_code


FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(body=txt2img_bodies())
def test_txt2img_never_fails_with_a_server_error(client, body):
    status = post(client, "/sdapi/v1/txt2img", body)
    if status == 200:  # valid work fields only; a null takes A1111's default (512, 20 steps)
        assert body["width"] in (64, None) and body["steps"] in (1, 2, None)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=options_bodies())
def test_options_never_fail_with_a_server_error(client, body):
    body.pop("sd_model_checkpoint", None) if body.get("sd_model_checkpoint") in (
        "alpha", "beta") else None
    post(client, "/sdapi/v1/options", body)
    assert client.get("/sdapi/v1/options").status_code == 200


def test_server_is_still_up(client):
    assert client.get("/sdapi/v1/samplers").status_code == 200
    body = {"width": 64, "height": 64, "steps": 1, "prompt": "still here"}
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200
