"""Concurrent API clients each get exactly the images they would get alone.

Jobs run one at a time in submission order; per-request settings (including a
per-job checkpoint) are copies, so interleaving requests must not change any pixel.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from modules.api.app import create_api_app
from tests.helpers.api_runtime import SMALL, decode_png, make_runtime

REQUESTS = [
    {"prompt": "a red circle", "seed": 1},
    {"prompt": "a red circle", "seed": 1, "override_settings": {"sd_model_checkpoint": "beta"}},
    {"prompt": "a blue square", "seed": 2, "sampler_name": "Euler a"},
    {"prompt": "two things", "seed": 3, "batch_size": 2},
    {"prompt": "clip skip", "seed": 4, "override_settings": {"CLIP_stop_at_last_layers": 2}},
    {"prompt": "variation", "seed": 5, "subseed": 9, "subseed_strength": 0.5,
     "sampler_name": "DPM++ 2M", "scheduler": "Karras"},
]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    runtime = make_runtime(tmp_path_factory.mktemp("api-concurrency"))
    yield TestClient(create_api_app(runtime))
    runtime.jobs.stop()


def pixels(client, body) -> tuple[str, list[bytes]]:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, **body})
    assert response.status_code == 200, response.text
    result = response.json()
    model = json.loads(result["info"])["sd_model_name"]
    return model, [decode_png(image).tobytes() for image in result["images"]]


def test_concurrent_requests_match_running_alone(client):
    alone = [pixels(client, body) for body in REQUESTS]
    with ThreadPoolExecutor(max_workers=len(REQUESTS)) as pool:
        together = list(pool.map(lambda body: pixels(client, body), REQUESTS))
    assert [model for model, _ in alone] == ["alpha", "beta", "alpha", "alpha", "alpha", "alpha"]
    assert alone[0][1] != alone[1][1]  # the per-job checkpoint really changed the image
    for index, (expected, got) in enumerate(zip(alone, together)):
        assert got == expected, f"request {index} differs when run concurrently"
