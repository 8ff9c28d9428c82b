"""Face restoration through the API: `restore_faces` after decode with its infotext,
`/sdapi/v1/face-restorers`, the extras fields, and the 422 for a missing file.

The restorer itself is tested in `tests/test_face_restore.py` (spandrel, the worker);
here a recording stand-in keeps the wiring fast: it inverts the picture, so the
response shows where restoration ran.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from modules.api.app import create_api_app
from modules.infotext import parse_infotext
from modules.upscaling.face_registry import FaceRestorers, face_restorers_of
from tests.helpers.api_runtime import SMALL, decode_png, make_runtime, png_base64


class Inverting(FaceRestorers):
    """Restores nothing: inverts the picture and records (name, weight)."""

    calls: list

    def restore(self, image, name, weight=0.5):
        self.path_for(name)  # the file must still be there
        self.calls.append((name, weight))
        return ImageOps.invert(image.convert("RGB"))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("face-api"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def install(runtime, *files: str) -> Inverting:
    restorers = face_restorers_of(runtime)
    for relative in files:
        path = runtime.paths.models_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    fake = Inverting(folders=restorers.folders, upscalers=restorers.upscalers)
    fake.calls = []
    runtime.face_restorers = fake
    return fake


def test_missing_restorer_is_a_422_naming_folder_and_file(client, runtime):
    install(runtime)
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "restore_faces": True})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert "codeformer-v0.1.0.pth" in detail and "models/Codeformer/" in detail
    assert client.get("/sdapi/v1/face-restorers").json() == []
    extras = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(Image.new("RGB", (32, 32))), "gfpgan_visibility": 1})
    assert extras.status_code == 422 and "GFPGANv1.4.pth" in extras.json()["detail"]


def test_restore_faces_runs_after_decode_with_a1111_infotext(client, runtime):
    fake = install(runtime, "Codeformer/codeformer-v0.1.0.pth", "GFPGAN/GFPGANv1.4.pth")
    listed = client.get("/sdapi/v1/face-restorers").json()
    assert [item["name"] for item in listed] == ["CodeFormer", "GFPGAN"]
    assert listed[0]["cmd_dir"].endswith("Codeformer")
    plain = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 3}).json()
    body = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 3, "restore_faces": True})
    assert body.status_code == 200, body.text
    restored, original = decode_png(body.json()["images"][0]), decode_png(plain["images"][0])
    assert np.array_equal(np.asarray(restored), 255 - np.asarray(original))
    assert fake.calls == [("CodeFormer", 0.5)]
    assert parse_infotext(restored.info["parameters"])["Face restoration"] == "CodeFormer"
    info = json.loads(body.json()["info"])
    assert info["restore_faces"] is True and info["face_restoration_model"] == "CodeFormer"
    assert "Face restoration" not in plain["info"]


def test_extras_gfpgan_then_codeformer_by_visibility(client, runtime):
    fake = install(runtime, "Codeformer/codeformer-v0.1.0.pth", "GFPGAN/GFPGANv1.4.pth")
    source = Image.new("RGB", (16, 16), (200, 100, 40))
    response = client.post("/sdapi/v1/extra-single-image", json={
        "image": png_base64(source), "gfpgan_visibility": 1.0, "codeformer_visibility": 0.5,
        "codeformer_weight": 0.25})
    assert response.status_code == 200, response.text
    assert fake.calls == [("GFPGAN", 0.5), ("CodeFormer", 0.25)]
    out = np.asarray(decode_png(response.json()["image"]), dtype=int)
    # GFPGAN fully: inverted; CodeFormer at half: halfway back to the original.
    assert np.abs(out - 127).max() <= 1
    assert "CodeFormer weight: 0.25" in response.json()["html_info"]


def test_settings_choose_the_restorer_and_turn_it_on(client, runtime):
    from modules.settings import Settings, SettingsError, validate

    defaults = Settings()
    assert (defaults.face_restoration, defaults.face_restoration_model,
            defaults.code_former_weight) == (False, "CodeFormer", 0.5)
    with pytest.raises(SettingsError, match="face_restoration_model"):
        validate("face_restoration_model", "Nope")
    fake = install(runtime, "Codeformer/codeformer-v0.1.0.pth", "GFPGAN/GFPGANv1.4.pth")
    overrides = {"face_restoration": True, "face_restoration_model": "GFPGAN",
                 "code_former_weight": 0.3}
    body = client.post("/sdapi/v1/txt2img", json={**SMALL, "override_settings": overrides})
    assert body.status_code == 200, body.text
    assert fake.calls == [("GFPGAN", 0.3)]  # restore_faces unset: the setting decides
    image = decode_png(body.json()["images"][0])
    assert parse_infotext(image.info["parameters"])["Face restoration"] == "GFPGAN"
    assert json.loads(body.json()["info"])["face_restoration_model"] == "GFPGAN"
    off = client.post("/sdapi/v1/txt2img", json={**SMALL, "restore_faces": False,
                                                  "override_settings": overrides})
    assert off.status_code == 200 and fake.calls == [("GFPGAN", 0.3)]  # the field wins
