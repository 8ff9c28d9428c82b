"""`/sdapi/v1/create/embedding` and `/sdapi/v1/train/embedding` on the demo model, tiny step
counts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.app.cmd_args import parse_args
from modules.networks.embeddings import read_embedding
from modules.runtime import Runtime
from modules.training.shapes import ShapeLabels, render
from tests.helpers.threads import one_thread  # noqa: F401 (fixture)

DEMO = (Path(__file__).resolve().parent.parent / "models" / "Stable-diffusion"
        / "easel-demo.safetensors")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("train-api")
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent),
                                    "--nowebui"]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Four bar pictures with A1111-style captions in .txt files beside them."""
    folder = tmp_path_factory.mktemp("bars")
    for index, (color, background) in enumerate((("red", "blue"), ("white", "black"),
                                                 ("yellow", "purple"), ("green", "orange"))):
        truth = ShapeLabels(shape="bar", color=color, background=background, position="center",
                            size="large")
        Image.fromarray(render(truth, resolution=64)).save(folder / f"{index:05d}-bar.png")
        (folder / f"{index:05d}-bar.txt").write_text(f"{color}, on {background}")
    (folder / "notes.md").write_text("not an image")
    return folder


def create(client, **fields):
    return client.post("/sdapi/v1/create/embedding", json=fields)


def test_create_embedding_writes_an_a1111_pt_and_lists_it(client, runtime):
    response = create(client, name="api-bar", num_vectors_per_token=3, init_text="red shape")
    assert response.status_code == 200, response.text
    path = runtime.paths.embeddings_dir / "api-bar.pt"
    assert response.json() == {"info": f"create embedding filename: {path}"}
    embedding = read_embedding(path)
    assert embedding.count == 3 and embedding.shape == 128 and embedding.step == 0
    assert embedding.sd_checkpoint_name == "easel-demo.safetensors"
    listed = client.get("/sdapi/v1/embeddings").json()["loaded"]["api-bar"]
    assert listed["vectors"] == 3 and listed["shape"] == 128


def test_create_refuses_to_overwrite_unless_asked(client, runtime):
    assert create(client, name="twice").status_code == 200
    again = create(client, name="twice", init_text="")
    assert again.status_code == 422 and "already exists" in again.json()["detail"]
    replaced = create(client, name="twice", init_text="", overwrite_old=True)
    assert replaced.status_code == 200
    replaced_vectors = read_embedding(runtime.paths.embeddings_dir / "twice.pt").vectors["*"]
    assert float(replaced_vectors.abs().sum()) == 0


@pytest.mark.parametrize("fields, needle", [
    ({"name": "///"}, "name"),
    ({"name": "x", "num_vectors_per_token": 0}, "num_vectors_per_token"),
    ({"name": "x", "num_vectors_per_token": 76}, "num_vectors_per_token"),
    ({"num_vectors_per_token": 1}, "name"),
])
def test_create_rejects_bad_fields(client, fields, needle):
    response = create(client, **fields)
    assert response.status_code == 422 and needle in response.text


def test_names_never_leave_the_embeddings_folder(client, runtime):
    response = create(client, name="../escape")
    assert response.status_code == 200
    assert (runtime.paths.embeddings_dir / "..escape.pt").is_file()


def train(client, **fields):
    return client.post("/sdapi/v1/train/embedding", json=fields)


def test_train_embedding_runs_and_continues_from_its_step(client, runtime, data_root):
    assert create(client, name="trained", num_vectors_per_token=2).status_code == 200
    path = runtime.paths.embeddings_dir / "trained.pt"
    before = read_embedding(path).vectors["*"].clone()
    fields = dict(embedding_name="trained", data_root=str(data_root), learn_rate="0.01:2, 0.005",
                  batch_size=2, gradient_step=2, steps=3, create_image_every=2,
                  save_embedding_every=2,
                  template_filename="subject_filewords.txt", shuffle_tags=True, tag_drop_out=0.2,
                  latent_sampling_method="random", clip_grad_mode="norm", clip_grad_value="1.0")
    response = train(client, **fields)
    assert response.status_code == 200, response.text
    assert response.json() == {"info": f"train embedding complete: filename: {path} error: None"}
    after = read_embedding(path)
    assert after.step == 3 and not after.vectors["*"].equal(before)
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["trained"]["step"] == 3
    logs = list((runtime.paths.data_dir / "textual_inversion").rglob("trained-2.*"))
    assert sorted(p.suffix for p in logs) == [".png", ".pt"]
    # A1111 continues from the stored step: 2 more steps up to 5.
    assert train(client, **{**fields, "steps": 5}).status_code == 200
    assert read_embedding(path).step == 5
    done = train(client, **{**fields, "steps": 5})
    assert done.status_code == 422 and "already trained for 5 steps" in done.json()["detail"]


@pytest.mark.parametrize("fields, needle", [
    ({"embedding_name": "nope"}, "embedding_name"),
    ({"learn_rate": "fast"}, "learn_rate"),
    ({"learn_rate": "0.1:10, 0.2:5"}, "learn_rate"),
    ({"batch_size": 0}, "batch_size"),
    ({"gradient_step": 0}, "gradient_step"),
    ({"steps": 0}, "steps"),
    ({"tag_drop_out": 1.5}, "tag_drop_out"),
    ({"clip_grad_value": "x"}, "clip_grad_value"),
    ({"latent_sampling_method": "sometimes"}, "latent_sampling_method"),
    ({"template_filename": "../../etc/passwd"}, "template_filename"),
    ({"log_directory": "../../outside"}, "log_directory"),
    ({"data_root": "/no/such/folder"}, "data_root"),
    ({"training_width": 65}, "training_width"),
    ({"use_weight": True}, "use_weight"),
    ({"template_filename": "filewords.txt"}, "never be used"),
])
def test_train_rejects_bad_fields_before_queueing(client, data_root, fields, needle):
    assert create(client, name="victim", overwrite_old=True).status_code == 200
    body = {"embedding_name": "victim", "data_root": str(data_root), "steps": 2, **fields}
    response = train(client, **body)
    assert response.status_code == 422, response.text
    assert needle in response.text


def test_training_is_a_job_that_interrupt_stops_and_keeps(client, runtime, data_root):
    assert create(client, name="long").status_code == 200
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(train(
        client, embedding_name="long", data_root=str(data_root), steps=100000, create_image_every=0,
        save_embedding_every=0, template_filename="subject_filewords.txt").json()))
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        progress = client.get("/sdapi/v1/progress").json()
        if progress["state"].get("sampling_step", 0) >= 2:
            break
        time.sleep(0.05)
    assert "Training embedding" in progress["textinfo"]
    assert progress["state"]["sampling_steps"] == 100000
    client.post("/sdapi/v1/interrupt")
    thread.join(timeout=60)
    assert answer["info"].endswith("error: None")
    assert 2 <= read_embedding(runtime.paths.embeddings_dir / "long.pt").step < 100000
