"""Model files that cannot be used are reported, never silent and never a 500 (docs/security.md,
"Model files"): broken or malicious LoRA / hypernetwork / ControlNet files are warnings in
the response `info`; a broken first checkpoint falls back at start; a diffusers folder is
hashed and served with hashing on; an unloadable checkpoint is a 4xx naming the file;
`create/embedding` never shadows a trained embedding; error texts carry no server paths.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.models import loader
from modules.models.family_metadata import METADATA_KEY, family_to_metadata
from modules.networks.embeddings import read_embedding
from modules.training.embedding_files import EmbeddingData, save_embedding
from tests.helpers.api_runtime import SMALL, make_runtime, png_base64
from tests.helpers.controlnet import write_tiny_controlnet
from tests.tiny import TINY_SD15

AUTH = {"Authorization": "Basic " + base64.b64encode(b"user:pw").decode()}


class Evil:
    """Unpickling this would run a shell command; the allow-list must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("model-files")
    models = data / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    # Sorted first: a start-up that stops at it has no model at all.
    (models / "Stable-diffusion" / "0-broken.safetensors").write_bytes(b"\x13\x37" * 64)
    (models / "Lora").mkdir()
    (models / "Lora" / "garbage.safetensors").write_bytes(b"not a model" * 10)
    torch.save({"lora_unet_x.lora_down.weight": Evil()}, models / "Lora" / "evil.pt")
    (models / "hypernetworks").mkdir()
    torch.save({768: Evil()}, models / "hypernetworks" / "evilnet.pt")
    write_tiny_controlnet(models / "ControlNet" / "control_tiny.safetensors", TINY_SD15.unet)
    (models / "ControlNet" / "control_bad.safetensors").write_bytes(b"\x00" * 100)
    (models / "ESRGAN").mkdir()
    (models / "ESRGAN" / "4x-broken.pth").write_bytes(b"garbage" * 20)
    rt = make_runtime(data, "--api-auth", "user:pw")
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime), headers=AUTH)


def txt2img(client, **fields) -> tuple[dict, dict]:
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "seed": 1, **fields})
    assert response.status_code == 200, response.text
    return response.json(), json.loads(response.json()["info"])


def no_server_paths(text: str, runtime) -> bool:
    return str(runtime.paths.data_dir) not in text and "/tmp/" not in text


def test_start_up_falls_back_past_a_broken_first_checkpoint(runtime):
    loaded = runtime.models.load_initial()
    assert loaded.info.name == "alpha.safetensors"
    assert runtime.models.current is loaded
    assert any("0-broken.safetensors" in w for w in runtime.models.startup_warnings)


@pytest.mark.parametrize("tag, needle", [("<lora:garbage:1>", "garbage"),
                                         ("<lora:evil:1>", "evil"),
                                         ("<hypernet:evilnet:1>", "evilnet"),
                                         ("<lora:missing:1>", "missing")])
def test_skipped_network_files_are_warnings_in_info(client, runtime, tag, needle):
    _, info = txt2img(client, prompt=f"a cat {tag}")
    warnings = info.get("warnings", [])
    assert any(needle in w for w in warnings), info
    assert all(no_server_paths(w, runtime) for w in warnings), warnings


def test_clean_job_keeps_a1111s_info_keys(client):
    _, info = txt2img(client, prompt="a cat")
    assert "warnings" not in info


def control_unit(model: str) -> dict:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:48] = 255
    return {"enabled": True, "module": "canny", "model": model, "processor_res": 64,
            "image": png_base64(Image.fromarray(pixels))}


@pytest.mark.parametrize("model", ["control_bad", "control_absent"])
def test_controlnet_unit_that_cannot_run_is_a_warning_and_not_in_the_infotext(client, runtime,
                                                                               model):
    _, info = txt2img(client, prompt="a square",
                      alwayson_scripts={"controlnet": {"args": [control_unit(model)]}})
    assert any("ControlNet unit 0" in w and model in w for w in info["warnings"]), info
    assert all(no_server_paths(w, runtime) for w in info["warnings"])
    assert "ControlNet 0" not in info["infotexts"][0]
    _, good = txt2img(client, prompt="a square",
                      alwayson_scripts={"controlnet": {"args": [control_unit("control_tiny")]}})
    assert "ControlNet 0" in good["infotexts"][0] and "warnings" not in good


def test_unloadable_checkpoint_is_a_4xx_naming_it_without_paths(client, runtime):
    response = client.post("/sdapi/v1/txt2img", json={
        **SMALL, "override_settings": {"sd_model_checkpoint": "0-broken"}})
    assert response.status_code == 422, response.text
    body = response.json()
    assert "0-broken.safetensors" in body["detail"]
    assert no_server_paths(response.text, runtime)
    before = runtime.settings.current.sd_model_checkpoint
    assert client.post("/sdapi/v1/options",
                       json={"sd_model_checkpoint": "0-broken"}).status_code == 422
    assert runtime.settings.current.sd_model_checkpoint == before  # not saved


def test_unusable_upscaler_file_is_a_4xx_naming_it(client, runtime):
    picture = png_base64(Image.new("RGB", (32, 32)))
    extras = client.post("/sdapi/v1/extra-single-image", json={
        "image": picture, "upscaler_1": "4x-broken", "upscaling_resize": 2})
    hires = client.post("/sdapi/v1/txt2img", json={
        **SMALL, "enable_hr": True, "hr_upscaler": "4x-broken", "hr_scale": 1.5,
        "denoising_strength": 0.5})
    for response in (extras, hires):
        assert response.status_code == 422, response.text[:300]
        assert "4x-broken.pth" in response.json()["detail"]
        assert no_server_paths(response.text, runtime)


def test_create_embedding_refuses_to_shadow_a_trained_one(client, runtime):
    folder = runtime.paths.embeddings_dir
    trained = save_embedding(EmbeddingData(name="trained", vectors=torch.ones(2, 32), step=500),
                             folder / "trained.safetensors")
    body = {"name": "trained", "num_vectors_per_token": 1, "init_text": ""}
    refused = client.post("/sdapi/v1/create/embedding", json={**body, "overwrite_old": False})
    assert refused.status_code == 422 and "already exists" in refused.json()["detail"]
    assert not (folder / "trained.pt").exists() and trained_sum(trained) == 64
    assert no_server_paths(refused.text, runtime)
    replaced = client.post("/sdapi/v1/create/embedding", json={**body, "overwrite_old": True})
    assert replaced.status_code == 200, replaced.text
    assert not (folder / "trained.pt").exists() and trained_sum(trained) == 0


def trained_sum(path: Path) -> float:
    return float(read_embedding(path).vectors["*"].sum())


# ---------------------------------------------------------------- diffusers folders


def write_diffusers_folder(root: Path) -> None:
    """A tiny SD1-layout diffusers folder matching TINY_SD15 (the real CLIP vocabulary)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=32, sample_size=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32,
                  down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=37, vocab_size=49408,
                                 max_position_embeddings=77)).save_pretrained(
        root / "text_encoder")
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"]}))


@pytest.fixture(scope="module")
def diffusers_runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("diffusers-api")
    write_diffusers_folder(data / "models" / "Stable-diffusion" / "tiny-diffusers")
    (data / "models" / "Stable-diffusion" / "plain-folder" / "model_index.json").parent.mkdir()
    (data / "models" / "Stable-diffusion" / "plain-folder" / "model_index.json").write_text("{}")
    rt = make_runtime(data)  # hashing on, the default
    assert rt.models.hashing
    yield rt
    rt.jobs.stop()


def test_undetectable_folder_is_a_4xx_naming_it(diffusers_runtime):
    client = TestClient(create_api_app(diffusers_runtime))
    for name in ("tiny-diffusers", "plain-folder"):  # unknown layout; no weights at all
        response = client.post("/sdapi/v1/txt2img", json={
            **SMALL, "override_settings": {"sd_model_checkpoint": name}})
        assert response.status_code == 422, response.text[:300]
        assert name in response.json()["detail"]
        assert no_server_paths(response.text, diffusers_runtime)


def test_diffusers_folder_loads_and_generates_with_hashing_on(diffusers_runtime, monkeypatch):
    # The tiny folder's sizes are no released family: declare it, as Easel's files do.
    real = loader.detect_family

    def declared(header, metadata=None, **kwargs):
        return real(header, {**(metadata or {}), METADATA_KEY: family_to_metadata(TINY_SD15)},
                    **kwargs)

    monkeypatch.setattr(loader, "detect_family", declared)
    client = TestClient(create_api_app(diffusers_runtime))
    _, info = txt2img(client, prompt="a cat",
                      override_settings={"sd_model_checkpoint": "tiny-diffusers"})
    unet = (diffusers_runtime.paths.checkpoint_dirs[0] / "tiny-diffusers" / "unet"
            / "diffusion_pytorch_model.safetensors")
    expected = diffusers_runtime.models.hash_cache.sha256(unet)
    assert info["sd_model_name"] == "tiny-diffusers" and expected.startswith(info["sd_model_hash"])
    listed = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
    assert listed["tiny-diffusers"]["sha256"] == expected


def test_without_paths_cuts_server_paths_only(tmp_path):
    from modules.errors import without_paths

    file = tmp_path / "models" / "x.safetensors"
    assert without_paths(f"{file}: truncated") == "x.safetensors: truncated"
    assert without_paths(f"No such file: '{tmp_path}/gone/y.pt'") == "No such file: 'y.pt'"
    kept = "see /sdapi/v1/loras, http://host/tmp/a and models/Lora/z.pt"
    assert without_paths(kept) == kept


def test_ui_checkpoint_error_names_the_file_without_paths(runtime):
    import gradio as gr

    from webui import widgets

    with pytest.raises(gr.Error) as raised:
        widgets.select_checkpoint(runtime, "0-broken")
    assert "0-broken.safetensors" in str(raised.value)
    assert no_server_paths(str(raised.value), runtime)
