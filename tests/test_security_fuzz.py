"""Hypothesis over every JSON request model of the API: never a 5xx, no file outside data.

Every POST route that takes a JSON body is found from the app's OpenAPI description, so
a route added later is fuzzed too. Each body mixes random JSON of any type with hostile
strings (absolute and `../` paths aimed at a folder beside the data directory, local
URLs, long and deeply nested prompts); the fields that set the amount of work are drawn
from short lists of small valid and invalid values so that examples stay fast. After
all examples, nothing may exist outside the data directory: no folder beside it, no file
in the working directory.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from modules.api.app import create_api_app
from modules.settings import Settings
from tests.helpers.api_runtime import make_runtime

OUTSIDE = "outside"  # a folder beside the data directory that must never appear


def tiny_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def hostile_strings(root: Path) -> list[str]:
    target = root / OUTSIDE
    return [str(target), f"{target}/x.png", f"../{OUTSIDE}", f"../../{OUTSIDE}/deep",
            "/etc/passwd", "../../../etc/passwd", "C:\\Windows\\x", "~/x", "",
            "http://127.0.0.1:1/x.png", "file:///etc/passwd", "a" * 300, "(" * 600 + "x",
            "[a:b:0.5]" * 50, "<lora:../../x:1>", "\x00", tiny_png()]


# Fields that set the amount of work: small valid values and invalid ones only.
WORK_FIELDS = {"width": [64, 0, -8, "wide", None, 3.5], "height": [64, 65, None, [], True],
               "steps": [1, 2, 0, -1, "many", None], "batch_size": [1, 0, 65, "x"],
               "n_iter": [1, 0, []], "upscaling_resize": [1, 2, 0, -1, 100, "x"],
               "upscaling_resize_w": [64, 0, 100000], "upscaling_resize_h": [64, -1],
               "hr_scale": [1, 2, 0, 50], "max_train_steps": [1, 0, -1, 10**9],
               "controlnet_processor_res": [64, 0, -1, 10**6], "num_vectors_per_token": [1, 0]}

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3),
                           max_leaves=6)


def body_routes(app) -> list[tuple[str, list[str]]]:
    """(path, field names) of every POST route with a JSON body, from the OpenAPI spec."""
    spec = app.openapi()
    schemas = spec.get("components", {}).get("schemas", {})
    routes = []
    for path, operations in spec["paths"].items():
        post = operations.get("post", {})
        body = post.get("requestBody", {}).get("content", {}).get("application/json")
        if body is None:
            continue
        schema = body["schema"]
        if "$ref" in schema:
            schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
        routes.append((path, sorted(schema.get("properties", {}))))
    return routes


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-all")
    data, cwd = root / "data", root / "cwd"
    cwd.mkdir()
    runtime = make_runtime(data)
    client = TestClient(create_api_app(runtime))
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        yield root, client
    runtime.jobs.stop()


def value_for(draw, name: str, hostile: list[str]):
    if name in WORK_FIELDS:
        return draw(st.sampled_from(WORK_FIELDS[name]))
    return draw(st.sampled_from(hostile) | json_values)


@st.composite
def bodies(draw, fields: list[str], hostile: list[str]):
    chosen = draw(st.lists(st.sampled_from(fields), unique=True, max_size=8)) if fields else []
    body = {name: value_for(draw, name, hostile) for name in chosen}
    for name in WORK_FIELDS:  # bound the work even when a work field was not chosen
        if name in fields and name not in body:
            body[name] = WORK_FIELDS[name][0]
    return body


@st.composite
def options_bodies(draw, hostile: list[str]):
    keys = st.sampled_from(Settings.names()) | st.text(max_size=12)
    values = st.sampled_from(hostile) | json_values
    return draw(st.dictionaries(keys, values, max_size=4))


def check(client, path: str, body) -> None:
    text = json.dumps(body)  # allow_nan: NaN/Infinity travel as Python sends them
    response = client.post(path, content=text, headers={"content-type": "application/json"})
    assert response.status_code < 500 or response.status_code == 501, (
        path, body, response.text)


def fuzz_route(client, path: str, strategy) -> None:
    @FUZZ
    @given(body=strategy)
    def run(body):
        check(client, path, body)

    run()


FUZZ = settings(max_examples=15, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])


def test_every_json_route_is_fuzzed(world):
    _, client = world
    paths = [path for path, _ in body_routes(client.app)]
    for expected in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/sdapi/v1/options",
                     "/sdapi/v1/extra-single-image", "/sdapi/v1/png-info",
                     "/sdapi/v1/create/embedding", "/sdapi/v1/train/embedding"):
        assert expected in paths


def test_no_json_route_answers_a_server_error_or_writes_outside_data(world):
    root, client = world
    hostile = hostile_strings(root)
    for path, fields in body_routes(client.app):
        strategy = (options_bodies(hostile) if path == "/sdapi/v1/options"
                    else bodies(fields, hostile))
        fuzz_route(client, path, strategy)
    assert sorted(p.name for p in root.iterdir()) == ["cwd", "data"]
    assert list((root / "cwd").iterdir()) == []
    assert client.get("/sdapi/v1/samplers").status_code == 200
