"""A plain HTTP client, written from A1111's documented API, against a real server.

Also the security checks: HTTP Basic on every /sdapi route and the docs, no secrets
in cmd-flags, the body-size limit, and refusal of image URLs pointing at local hosts.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from modules.api.convert import decode_image, is_forbidden_address, verify_url
from modules.api.errors import ApiError
from modules.settings import Settings
from tests.helpers.api_runtime import SMALL, decode_png, make_runtime
from tests.helpers.live_server import serve


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("api-client"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def http(runtime):
    with serve(create_api_app(runtime)) as base_url:
        with httpx.Client(base_url=base_url, timeout=120) as client:
            yield client


def test_txt2img_and_png_info_round_trip(http):
    response = http.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": "a, b: c", "seed": 77,
                                                    "negative_prompt": "bad"})
    assert response.status_code == 200
    assert "x-process-time" in response.headers
    body = response.json()
    info = json.loads(body["info"])
    image = decode_png(body["images"][0])
    assert image.info["parameters"] == info["infotexts"][0]
    png_info = http.post("/sdapi/v1/png-info", json={"image": body["images"][0]}).json()
    parsed = png_info["parameters"]
    assert parsed["Prompt"] == "a, b: c" and parsed["Negative prompt"] == "bad"
    assert parsed["Seed"] == "77" and parsed["Size-1"] == "64" and parsed["Sampler"] == "Euler"
    again = http.post("/sdapi/v1/txt2img", json={"infotext": png_info["info"]}).json()
    assert decode_png(again["images"][0]).tobytes() == image.tobytes()


def test_options_round_trip(http):
    before = http.get("/sdapi/v1/options").json()
    flipped = not before["samples_save"]
    assert http.post("/sdapi/v1/options", json={"samples_save": flipped}).status_code == 200
    assert http.get("/sdapi/v1/options").json()["samples_save"] is flipped
    http.post("/sdapi/v1/options", json={"samples_save": before["samples_save"]})


def run_in_thread(http, body):
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(response=http.post("/sdapi/v1/txt2img", json=body)))
    thread.start()
    return thread, result


def test_progress_advances_during_a_job(http):
    thread, result = run_in_thread(http, {**SMALL, "steps": 30, "seed": 1})
    seen = []
    while thread.is_alive():
        state = http.get("/sdapi/v1/progress").json()
        if state["state"]["sampling_steps"]:
            seen.append((state["progress"], state["state"]["sampling_step"]))
            assert state["state"]["sampling_steps"] == 30 and state["state"]["job_count"] == 1
        time.sleep(0.01)
    thread.join()
    assert result["response"].status_code == 200
    assert len({step for _, step in seen}) >= 2, seen
    assert all(0 < fraction <= 1 for fraction, _ in seen)
    steps = [step for _, step in seen]
    assert steps == sorted(steps)


def test_interrupt_ends_the_job_early(http):
    thread, result = run_in_thread(http, {**SMALL, "steps": 30, "n_iter": 5, "seed": 1})
    deadline = time.monotonic() + 60
    while http.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert http.post("/sdapi/v1/interrupt").json() == {}
    thread.join()
    info = json.loads(result["response"].json()["info"])
    assert 1 <= len(info["all_seeds"]) < 5


# ------------------------------------------------------------------ security

SECRET = "s3cret-pass"


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    runtime = make_runtime(tmp_path_factory.mktemp("api-auth"), "--api-auth", f"alice:{SECRET}",
                           "--gradio-auth", f"bob:{SECRET}", "--max-body-mb", "0.01")
    yield TestClient(create_api_app(runtime)), runtime
    runtime.jobs.stop()


def api_routes(app):
    yield from (("GET", path) for path in ("/docs", "/redoc", "/openapi.json"))
    for path, operations in app.openapi()["paths"].items():
        if path.startswith("/sdapi/"):
            yield from ((method.upper(), path) for method in operations)


def test_every_api_route_needs_credentials(locked):
    client, _ = locked
    routes = list(api_routes(client.app))
    assert len(routes) >= 39
    for method, path in routes:
        response = client.request(method, path)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Basic"
        assert response.json() == {"detail": "Incorrect username or password"}
        wrong = client.request(method, path, auth=("alice", "nope"))
        assert wrong.status_code == 401, (method, path)
    assert client.get("/sdapi/v1/samplers", auth=("alice", SECRET)).status_code == 200
    assert client.get("/openapi.json", auth=("alice", SECRET)).status_code == 200


def test_cmd_flags_hide_credentials(locked):
    client, _ = locked
    response = client.get("/sdapi/v1/cmd-flags", auth=("alice", SECRET))
    assert response.status_code == 200 and SECRET not in response.text
    assert response.json()["api_auth"] is None and response.json()["gradio_auth"] is None


def test_body_limit(locked):
    client, _ = locked
    big = {"prompt": "x" * 20_000}
    response = client.post("/sdapi/v1/txt2img", json=big, auth=("alice", SECRET))
    assert response.status_code == 413 and "max-body-mb" in response.json()["detail"]
    streamed = client.post("/sdapi/v1/png-info", auth=("alice", SECRET),
                           content=(chunk for chunk in [b"{" + b" " * 20_000 + b"}"]))
    assert streamed.status_code == 413


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254",
                                     "::1", "fe80::1", "::ffff:127.0.0.1", "0.0.0.0", "fc00::1"])
def test_local_addresses_are_refused(address):
    assert is_forbidden_address(address)
    with pytest.raises(ApiError) as refused:
        verify_url("http://example.test/a.png", forbid_local=True,
                   resolve=lambda host: ["93.184.216.34", address])
    assert refused.value.status_code == 403 and address in refused.value.detail


def test_url_images_follow_the_settings():
    fetched = []
    fetch = lambda url: fetched.append(url) or b""  # noqa: E731
    with pytest.raises(ApiError, match="api_enable_requests"):
        decode_image("http://example.test/a.png", Settings(api_enable_requests=False), fetch=fetch)
    with pytest.raises(ApiError, match="local resource"):
        decode_image("http://localhost/a.png", Settings(),
                     resolve=lambda host: ["127.0.0.1"], fetch=fetch)
    assert fetched == []
    assert not is_forbidden_address("93.184.216.34")
    with pytest.raises(ApiError, match="Invalid encoded image"):
        decode_image("https://example.test/a.png", Settings(api_forbid_local_requests=False),
                     fetch=lambda url: b"not an image")
    pixel = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgAB"
                             "SK+kcQAAAABJRU5ErkJggg==")
    assert decode_image("data:image/png;base64," + base64.b64encode(pixel).decode(),
                        Settings()).size == (1, 1)
