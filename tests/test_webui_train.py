"""The Train tab: it builds, and its handlers create and train through the job queue."""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import pytest
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.networks.embeddings import read_embedding
from modules.networks.files import load_network_file
from modules.runtime import Runtime
from modules.training.shapes import ShapeLabels, render
from tests.helpers.threads import one_thread  # noqa: F401 (fixture)
from webui.tabs import train

DEMO = (Path(__file__).resolve().parent.parent / "models" / "Stable-diffusion"
        / "easel-demo.safetensors")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("train-ui")
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent)]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ui-bars")
    for color in ("red", "white"):
        truth = ShapeLabels(shape="bar", color=color, background="blue", position="center",
                            size="large")
        image = Image.fromarray(render(truth, resolution=64))
        image.save(folder / f"{color} bar, blue background.png")
    return folder


def test_the_tab_builds_with_its_three_parts(runtime):
    with gr.Blocks():
        tab = train.build(runtime)
    assert set(tab.create) == {"name", "init_text", "num_vectors_per_token", "overwrite_old"}
    assert {"embedding_name", "learn_rate", "data_root", "template_filename",
            "latent_sampling_method"} <= set(
        tab.embedding)
    assert {"lora_name", "rank", "alpha", "text_encoder", "steps"} <= set(tab.lora)
    choices = tab.embedding["template_filename"].choices
    assert ("subject_filewords.txt", "subject_filewords.txt") in choices


def ui_values(**fields):
    """What the widgets send: Number widgets give floats, 0 means the native size."""
    values = {"learn_rate": "0.005", "clip_grad_mode": "disabled", "clip_grad_value": 0.1,
              "batch_size": 2.0,
              "gradient_step": 1.0, "log_directory": "textual_inversion", "training_width": 0.0,
              "training_height": 0.0, "steps": 2.0, "create_image_every": 0.0,
              "save_embedding_every": 0.0,
              "shuffle_tags": False, "tag_drop_out": 0.0, "latent_sampling_method": "once",
              "seed": 0.0, "template_filename": "subject_filewords.txt"}
    return values | fields


def test_create_then_train_an_embedding_from_the_tab(runtime, data_root):
    info, dropdown = train.create_embedding_action(
        runtime,
        {"name": "ui-bar", "init_text": "bar", "num_vectors_per_token": 2, "overwrite_old": False})
    assert "ui-bar.pt" in info and dropdown.value == "ui-bar"
    assert "ui-bar" in train.embedding_names(runtime)
    updates = list(train.train_embedding_action(runtime, ui_values(embedding_name="ui-bar",
                                                                    data_root=str(data_root))))
    assert "at step 2" in updates[-1][1]
    assert read_embedding(runtime.paths.embeddings_dir / "ui-bar.pt").step == 2


def test_train_a_lora_from_the_tab(runtime, data_root):
    updates = list(train.train_lora_action(runtime, ui_values(
        lora_name="ui-lora", rank=2.0, alpha=2.0, text_encoder=True, learn_rate="1e-3",
        template_filename="filewords.txt", data_root=str(data_root))))
    assert "ui-lora.safetensors at step 2" in updates[-1][1]
    network = load_network_file(runtime.paths.lora_dir / "ui-lora.safetensors")
    assert network.metadata["ss_network_dim"] == "2"
    assert network.metadata["ss_output_name"] == "ui-lora"
    assert any(name.startswith("lora_te_") for name in network.groups)
    assert runtime.networks.loras.find("ui-lora") is not None


@pytest.mark.parametrize("fields, label", [
    ({"learn_rate": "soon"}, "Learning rate"),
    ({"data_root": ""}, "Dataset directory"),
    ({"steps": 0.0}, "Max steps"),
    ({"template_filename": "missing.txt"}, "Prompt template"),
])
def test_bad_widget_values_name_the_widget(runtime, data_root, fields, label):
    values = ui_values(lora_name="bad", data_root=str(data_root)) | fields
    with pytest.raises(gr.Error, match=label):
        list(train.train_lora_action(runtime, values))


def test_creating_an_existing_embedding_names_the_widget(runtime):
    values = {"name": "twice", "init_text": "*", "num_vectors_per_token": 1, "overwrite_old": False}
    train.create_embedding_action(runtime, values)
    with pytest.raises(gr.Error, match="Name: .*already exists"):
        train.create_embedding_action(runtime, values)
