"""Listings right after start (docs/security.md, "A1111 behaviours clients rely on"):
`/sdapi/v1/embeddings` waits for the first model load (bounded, then 503 + Retry-After)
instead of answering "none installed"; `/sdapi/v1/realesrgan-models` lists the Real-ESRGAN
files that are there; one rule for links in every model folder.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient

from modules.api import routes_listing
from modules.api.app import create_api_app
from modules.training.embedding_files import EmbeddingData, save_embedding
from tests.helpers.api_runtime import make_runtime


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("listing-startup")
    rt = make_runtime(data)
    save_embedding(EmbeddingData(name="shiny", vectors=torch.ones(2, 32)),
                   rt.paths.embeddings_dir / "shiny.safetensors")
    rt.ready.clear()  # as right after start: the first checkpoint is still loading
    yield rt
    rt.jobs.stop()


def test_embeddings_wait_for_the_first_load(runtime, monkeypatch):
    monkeypatch.setattr(routes_listing, "READY_WAIT_S", 0.2)
    client = TestClient(create_api_app(runtime))
    busy = client.get("/sdapi/v1/embeddings")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
    assert "still loading" in busy.json()["detail"]

    monkeypatch.setattr(routes_listing, "READY_WAIT_S", 30.0)

    def load() -> None:
        time.sleep(0.3)
        runtime.models.load_initial()
        runtime.ready.set()

    loader = threading.Thread(target=load)
    loader.start()
    answer = client.get("/sdapi/v1/embeddings")  # asked during the load: answered after it
    loader.join()
    assert answer.status_code == 200
    assert answer.json()["loaded"]["shiny"]["vectors"] == 2


def test_embeddings_without_a_model_list_the_files_as_skipped(runtime):
    runtime.ready.set()
    runtime.models.unload()
    client = TestClient(create_api_app(runtime))
    body = client.get("/sdapi/v1/embeddings").json()
    assert body == {"loaded": {}, "skipped": {"shiny": {"error": "no checkpoint is loaded"}}}


def test_realesrgan_models_lists_the_files_present(runtime):
    dirs = dict(zip(("ESRGAN", "RealESRGAN"), runtime.paths.upscaler_dirs[:2]))
    for folder, name in ((dirs["RealESRGAN"], "my-x2-model.pth"),
                         (dirs["RealESRGAN"], "realesr-animevideov3.pth"),
                         (dirs["ESRGAN"], "RealESRGAN_x4plus_anime_6B.pth"),
                         (dirs["ESRGAN"], "4x-UltraSharp.pth")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"weights")
    client = TestClient(create_api_app(runtime))
    listed = {item["name"]: item for item in client.get("/sdapi/v1/realesrgan-models").json()}
    assert set(listed) == {"my-x2-model", "realesr-animevideov3", "RealESRGAN_x4plus_anime_6B"}
    assert listed["my-x2-model"]["scale"] == 2 and listed["realesr-animevideov3"]["scale"] == 4
    assert listed["RealESRGAN_x4plus_anime_6B"]["path"].endswith("RealESRGAN_x4plus_anime_6B.pth")
    upscalers = {item["name"] for item in client.get("/sdapi/v1/upscalers").json()}
    assert set(listed) <= upscalers  # the names hr_upscaler and extras accept
