"""Issue #25 items 4 and 10 without a browser: batch grids are saved by the pipeline
(every client gets them), and `--data-dir` keeps the shipped demo checkpoint listed."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.app.cmd_args import parse_args
from modules.imaging.save import read_infotext
from modules.paths import ROOT, SHIPPED_CHECKPOINTS, Paths
from tests.helpers.api_runtime import SMALL, make_runtime, png_base64

DEMO = "easel-demo"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("grid-data"))
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def grids(runtime, kind: str) -> list:
    folder = runtime.paths.data_dir / "outputs" / f"{kind}-grids"
    return sorted(folder.rglob("*.png")) if folder.exists() else []


def test_txt2img_batch_saves_one_grid_with_the_first_infotext(runtime, client):
    before = grids(runtime, "txt2img")
    response = client.post("/sdapi/v1/txt2img", json={
        **SMALL, "prompt": "a grid", "seed": 7, "batch_size": 2, "n_iter": 2,
        "save_images": True})
    assert response.status_code == 200, response.text
    new = [p for p in grids(runtime, "txt2img") if p not in before]
    assert len(new) == 1
    with Image.open(new[0]) as grid:
        assert grid.size == (128, 128)  # 2x2 cells of 64x64
        text = read_infotext(grid)
    assert text.startswith("a grid\n") and "Seed: 7," in text


def test_no_grid_when_the_request_does_not_save(runtime, client):
    before = grids(runtime, "txt2img")
    response = client.post("/sdapi/v1/txt2img", json={
        **SMALL, "prompt": "a grid", "batch_size": 2, "n_iter": 2, "save_images": False})
    assert response.status_code == 200, response.text
    assert grids(runtime, "txt2img") == before


def test_no_grid_for_a_single_image_or_with_grid_save_off(runtime, client):
    before = grids(runtime, "txt2img")
    for fields in ({"batch_size": 1}, {"batch_size": 2,
                                       "override_settings": {"grid_save": False}}):
        response = client.post("/sdapi/v1/txt2img", json={
            **SMALL, "prompt": "x", "save_images": True, **fields})
        assert response.status_code == 200, response.text
    assert grids(runtime, "txt2img") == before


def test_img2img_batch_saves_its_grid(runtime, client):
    before = grids(runtime, "img2img")
    init = png_base64(Image.new("RGB", (64, 64), (200, 40, 40)))
    response = client.post("/sdapi/v1/img2img", json={
        **SMALL, "prompt": "red", "init_images": [init], "batch_size": 2,
        "denoising_strength": 0.5, "save_images": True})
    assert response.status_code == 200, response.text
    assert len([p for p in grids(runtime, "img2img") if p not in before]) == 1


def test_data_dir_keeps_the_shipped_checkpoint_folder(tmp_path):
    paths = Paths.from_args(parse_args(["--data-dir", str(tmp_path)]))
    assert paths.checkpoint_dirs == (tmp_path.resolve() / "models" / "Stable-diffusion",
                                     SHIPPED_CHECKPOINTS)
    for flags in ([], ["--data-dir", str(ROOT)]):  # the code folder itself: listed once
        assert Paths.from_args(parse_args(flags)).checkpoint_dirs == (SHIPPED_CHECKPOINTS,)
    with_ckpt = Paths.from_args(parse_args(["--data-dir", str(tmp_path), "--ckpt-dir",
                                            str(tmp_path / "ck")]))
    assert with_ckpt.checkpoint_dirs[0] == (tmp_path / "ck").resolve()  # merges still go here
    assert with_ckpt.checkpoint_dirs[-1] == SHIPPED_CHECKPOINTS


def test_data_dir_lists_the_demo_model_and_keeps_the_users_default(runtime, client):
    names = [m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert names == ["alpha", "beta", DEMO]
    assert runtime.models.default_checkpoint().stem == "alpha"  # the demo comes last
    demo = runtime.models.find(DEMO)
    assert demo.path == str(SHIPPED_CHECKPOINTS / f"{DEMO}.safetensors")
