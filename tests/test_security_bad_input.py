"""Issue #17 item 7: inputs that answered 500 are now a 4xx naming the field.

Each test is one reproduction from the security pass: deeply nested prompts, a
20000 x 20000 PNG sent to `/controlnet/detect`, Extras results under 8 px, a 300-character
embedding name, and an unknown or path-like `sd_vae` (per request and in `/options`).
"""

from __future__ import annotations

import base64
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from tests.helpers.api_runtime import SMALL, make_runtime, png_base64


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("bad-input-data"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def refused(response, field: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    assert field in str(response.json()["detail"]), response.text


def test_deeply_nested_prompts_are_refused_naming_the_field(client):
    for opening, closing in (("(", ")"), ("[", "]"), ("[a:", ":0.5]")):
        prompt = opening * 500 + "x" + closing * 500
        refused(client.post("/sdapi/v1/txt2img", json={**SMALL, "prompt": prompt}), "prompt")
    body = {**SMALL, "prompt": "x", "negative_prompt": "(" * 600}
    refused(client.post("/sdapi/v1/txt2img", json=body), "negative_prompt")
    deep = {**SMALL, "steps": 1, "prompt": "(" * 100 + "x" + ")" * 100}  # the limit itself
    assert client.post("/sdapi/v1/txt2img", json=deep).status_code == 200


def huge_png(side: int = 20000) -> bytes:
    """A 1-bit side x side PNG of zeros: ~50 KB of file, `side`² pixels when decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
            + chunk(b"IEND", b""))


def test_controlnet_detect_refuses_a_decompression_bomb(client):
    text = base64.b64encode(huge_png()).decode()
    response = client.post("/controlnet/detect", json={"controlnet_module": "canny",
                                                       "controlnet_input_images": [text]})
    assert 400 <= response.status_code < 500, response.text
    assert "controlnet_input_images[0]" in response.text


def test_extras_results_under_8_px_are_refused(client):
    image = png_base64(Image.new("RGB", (16, 16), "white"))
    by = {"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 0.25}
    refused(client.post("/sdapi/v1/extra-single-image", json=by), "upscaling_resize")
    to = {"image": image, "upscaler_1": "Lanczos", "resize_mode": 1,
          "upscaling_resize_w": 4, "upscaling_resize_h": 4}
    refused(client.post("/sdapi/v1/extra-single-image", json=to), "upscaling_resize_w")
    batch = {"imageList": [{"data": image, "name": "a.png"}], "upscaler_1": "Lanczos",
             "upscaling_resize": 0.1}
    refused(client.post("/sdapi/v1/extra-batch-images", json=batch), "upscaling_resize")


def test_long_embedding_names_are_refused(client, runtime):
    long = "n" * 300
    refused(client.post("/sdapi/v1/create/embedding", json={"name": long}), "name")
    assert not any(runtime.paths.embeddings_dir.glob("n*"))
    body = {"embedding_name": long, "data_root": str(runtime.paths.data_dir), "steps": 2}
    refused(client.post("/sdapi/v1/train/embedding", json=body), "embedding_name")


def test_unknown_vae_in_override_settings_is_refused(client):
    body = {**SMALL, "prompt": "x", "override_settings": {"sd_vae": "no-such-vae.safetensors"}}
    refused(client.post("/sdapi/v1/txt2img", json=body), "sd_vae")


def test_options_are_validated_before_they_are_stored(client, runtime):
    for value in ("../../../etc/passwd", "no-such-vae.safetensors", "/etc/passwd"):
        refused(client.post("/sdapi/v1/options", json={"sd_vae": value}), "sd_vae")
    assert runtime.settings.current.sd_vae == "Automatic"
    assert client.post("/sdapi/v1/options", json={"sd_vae": "None"}).status_code == 200
    assert client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 1}).status_code == 200
    assert client.post("/sdapi/v1/options", json={"sd_vae": "Automatic"}).status_code == 200


def test_a_vae_infotext_from_elsewhere_is_dropped_as_a1111(client):
    infotext = "x\nSteps: 1, Sampler: Euler, Seed: 1, Size: 64x64, VAE: elsewhere.safetensors"
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "steps": 1, "infotext": infotext})
    assert response.status_code == 200, response.text
