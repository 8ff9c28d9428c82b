"""Embedding and LoRA training on a tiny model: schedule, files, data, loops, loading back."""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modules.conditioning.tokenizer import ClipTokenizer
from modules.networks.embeddings import read_embedding
from modules.networks.files import load_network_file
from modules.networks.library import LoraLibrary
from modules.networks.names import NameMap
from modules.pipeline.params import ParamsError
from modules.training.concept_core import drive
from modules.training.concept_data import (
    PromptOptions,
    bar_items,
    folder_items,
    make_prompt,
    read_template,
)
from modules.training.embedding_files import (
    EmbeddingData,
    create_embedding,
    initial_vectors,
    save_embedding,
)
from modules.training.evaluate import load_model
from modules.training.lora_network import LoraNetwork, kohya_names
from modules.training.lr_schedule import parse_learn_rate
from modules.training.train_embedding import EmbeddingTrainingConfig, embedding_training
from modules.training.train_lora import LoraTrainingConfig, lora_training
from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.helpers.threads import one_thread  # noqa: F401 (fixture)
from tests.tiny import TINY_SD15

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors", TINY_SD15)


@pytest.fixture(scope="module")
def tokenizer():
    return ClipTokenizer()


# ---- learn-rate schedule ----------------------------------------------------------------

def test_learn_rate_schedule_pieces_and_end():
    schedule = parse_learn_rate("0.005:100, 1e-3:1000, 1e-5")
    assert [schedule.rate_at(s) for s in (0, 99, 100, 999, 1000, 50000)] == [
        0.005, 0.005, 1e-3, 1e-3, 1e-5, 1e-5]
    assert schedule.total_steps(100000) == 100000
    assert parse_learn_rate("0.01:10, 0.001:20").total_steps(100000) == 20
    assert parse_learn_rate(" 0.005 ").pieces == ((0.005, None),)
    assert parse_learn_rate("0.1:5, 0.2:-1").total_steps(30) == 30


@pytest.mark.parametrize("text, reason", [
    ("", "empty"), ("abc", "not a number"), ("0.1:x", "whole number"),
    ("0.1, 0.2:5", "must be the last"),
    ("0.1:5, 0.2:3", "must increase"), ("-1", "positive"), ("0", "positive"), ("nan", "positive"),
    ("0.1:0", "at least 1"),
])
def test_learn_rate_errors_name_the_field(text, reason):
    with pytest.raises(ParamsError, match=reason) as caught:
        parse_learn_rate(text)
    assert caught.value.field == "learn_rate"


# ---- embedding files --------------------------------------------------------------------

def test_initial_vectors_follow_the_init_text(tokenizer):
    table = torch.arange(49408 * 3, dtype=torch.float32).reshape(49408, 3)
    ids = tokenizer.encode("red circle")
    stretched = initial_vectors(table, tokenizer, "red circle", 4)
    assert torch.equal(stretched, table[[ids[0], ids[0], ids[1], ids[1]]])
    assert torch.equal(initial_vectors(table, tokenizer, "red circle square", 2), table[ids])
    assert initial_vectors(table, tokenizer, "", 3).abs().sum() == 0
    with pytest.raises(ParamsError, match="num_vectors_per_token"):
        initial_vectors(table, tokenizer, "*", 76)


def test_both_a1111_formats_read_back(tmp_path):
    data = EmbeddingData(name="thing", vectors=torch.randn(3, 32), step=7,
                         sd_checkpoint="abcdef0123", sd_checkpoint_name="tiny")
    pt = save_embedding(data, tmp_path / "thing.pt")
    raw = torch.load(pt, weights_only=True)
    assert set(raw) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint",
                        "sd_checkpoint_name"}
    assert raw["string_to_token"] == {"*": 265} and list(raw["string_to_param"]) == ["*"]
    read = read_embedding(pt)
    assert (read.name, read.step, read.sd_checkpoint, read.sd_checkpoint_name) == (
        "thing", 7, "abcdef0123", "tiny")
    st = read_embedding(save_embedding(data, tmp_path / "other" / "thing.safetensors"))
    assert torch.equal(st.vectors["*"], data.vectors)
    assert torch.equal(read.vectors["*"], data.vectors)


def test_create_cleans_the_name_and_refuses_to_overwrite(tmp_path, tokenizer):
    table = torch.randn(49408, 8)
    path = create_embedding(folder=tmp_path, name="my/emb?", token_embedding=table,
                            tokenizer=tokenizer)
    assert path == tmp_path / "myemb.pt"
    with pytest.raises(ParamsError, match="already exists"):
        create_embedding(folder=tmp_path, name="myemb", token_embedding=table, tokenizer=tokenizer)
    with pytest.raises(ParamsError, match="name"):
        create_embedding(folder=tmp_path, name="?!", token_embedding=table, tokenizer=tokenizer)


# ---- data -------------------------------------------------------------------------------

def test_folder_dataset_reads_captions_like_a1111(tmp_path):
    Image.new("RGB", (20, 10), "red").save(tmp_path / "00012-a red thing.png")
    Image.new("RGB", (10, 10), "blue").save(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("blue, square, plain\n")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    items = folder_items(tmp_path, width=16, height=8)
    assert [i.filewords for i in items] == ["a red thing", "blue, square, plain"]
    assert items[0].image.shape == (8, 16, 3)
    with pytest.raises(ParamsError, match="data_root"):
        folder_items(tmp_path / "missing", width=8, height=8)


def test_prompts_from_templates_shuffle_and_drop_tags(tmp_path):
    (tmp_path / "t.txt").write_text("a [name] made of [filewords]\n\n")
    template = read_template(tmp_path, "t.txt")
    options = PromptOptions(name="zz", template=tuple(template), shuffle_tags=True,
                            tag_drop_out=0.5)
    prompts = {make_prompt("a, b, c, d", options, random.Random(i)) for i in range(20)}
    assert all(p.startswith("a zz made of ") for p in prompts) and len(prompts) > 5
    assert any(len(p.split(", ")) < 4 for p in prompts)
    for bad in ("../t.txt", "missing.txt"):
        with pytest.raises(ParamsError, match="template_filename"):
            read_template(tmp_path, bad)


def test_bar_items_name_the_concept_word():
    items = bar_items("zz-bar", count=5, seed=0, resolution=64)
    assert all(" zz-bar " in item.filewords and "bar " not in item.filewords.replace("zz-bar", "")
               for item in items)


# ---- embedding training -----------------------------------------------------------------

def start_vectors(width: int) -> torch.Tensor:
    return torch.randn(2, width, generator=torch.Generator().manual_seed(1)) * 0.02


def train_embedding_steps(tiny_path, tmp_path, tokenizer, **overrides):
    model = load_model(tiny_path)
    width = model.family.text_encoders[0].config.hidden_size
    file = save_embedding(EmbeddingData(name="zz-bar", vectors=start_vectors(width)),
                          tmp_path / "zz-bar.pt")
    config = replace(EmbeddingTrainingConfig(learn_rate="0.05", batch_size=2, steps=4, save_every=2,
                                             preview_every=0, latent_sampling_method="random"),
                     **overrides)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    items = bar_items("zz-bar", count=4, seed=0, resolution=64)
    training = embedding_training(model, embedding_file=file, items=items, config=config,
                                  tokenizer=tokenizer,
                                  outputs=[tmp_path / "out" / "zz-bar.safetensors"],
                                  log_dir=tmp_path / "log")
    result = drive(training, progress=False)
    unchanged = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    return result, unchanged


def test_embedding_loop_trains_only_the_vectors_and_is_reproducible(tiny_path, tmp_path, tokenizer):
    first, unchanged = train_embedding_steps(tiny_path, tmp_path / "a", tokenizer)
    again, _ = train_embedding_steps(tiny_path, tmp_path / "b", tokenizer)
    assert unchanged and first.step == 4 and not first.interrupted
    assert all(np.isfinite(first.losses))
    vectors = read_embedding(first.paths[0]).vectors["*"]
    assert torch.equal(vectors, read_embedding(again.paths[0]).vectors["*"])
    assert not torch.allclose(vectors, start_vectors(vectors.shape[1]))
    assert read_embedding(first.paths[1]).vectors["*"].equal(vectors)
    assert (tmp_path / "a" / "log" / "embeddings" / "zz-bar-2.pt").is_file()


def test_embedding_training_stops_on_interrupt_and_saves(tiny_path, tmp_path, tokenizer):
    model = load_model(tiny_path)
    file = create_embedding(folder=tmp_path, name="zz-bar", tokenizer=tokenizer,
                            num_vectors_per_token=1,
                            token_embedding=model.text_encoders["clip_l"].token_embedding.weight)
    training = embedding_training(model, embedding_file=file,
                                  items=bar_items("zz-bar", count=2, seed=0, resolution=64),
                                  config=EmbeddingTrainingConfig(steps=1000, save_every=0,
                                                                 preview_every=0),
                                  tokenizer=tokenizer)
    assert next(training).step == 1
    assert training.send(None).step == 2
    with pytest.raises(StopIteration) as stop:
        training.send("interrupt")
    # The answer to step 2's event stops the run before another step is taken.
    assert stop.value.value.interrupted and stop.value.value.step == 2
    assert read_embedding(file).step == 2


def test_embedding_width_must_fit(tiny_path, tmp_path, tokenizer):
    file = save_embedding(EmbeddingData(name="wide", vectors=torch.zeros(1, 768)),
                          tmp_path / "wide.pt")
    with pytest.raises(ParamsError, match="width 768"):
        next(embedding_training(load_model(tiny_path), embedding_file=file, tokenizer=tokenizer,
                                items=bar_items("wide", count=1, seed=0, resolution=64),
                                config=EmbeddingTrainingConfig(steps=1)))


# ---- LoRA ---------------------------------------------------------------------------------

def test_kohya_names_come_from_the_name_map_in_diffusers_spelling(tiny_path):
    model = load_model(tiny_path)
    names = kohya_names(model, text_encoder=True)
    name_map = NameMap(model=model)
    assert all(name_map.get(name) == target for name, target in names.items())
    unet = [n for n in names if n.startswith("lora_unet_")]
    text = [n for n in names if n.startswith("lora_te_")]
    assert unet and all(n.startswith(("lora_unet_down_blocks_", "lora_unet_mid_block_",
                                      "lora_unet_up_blocks_"))
                        for n in unet)
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k" in unet
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in unet
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in text and len(text) == 2 * 6


def test_lora_loop_writes_a_kohya_file_that_loads(tiny_path, tmp_path, tokenizer):
    model = load_model(tiny_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = LoraTrainingConfig(rank=2, alpha=1.0, text_encoder=True, learn_rate="1e-2",
                                batch_size=2, steps=3)
    out = tmp_path / "Lora" / "zz.safetensors"
    result = drive(lora_training(model, out=out,
                                 items=bar_items("bar", count=4, seed=0, resolution=64),
                                 config=config, tokenizer=tokenizer, checkpoint_name="tiny"),
                   progress=False)
    assert result.step == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    network = load_network_file(out)
    meta = network.metadata
    assert (meta["ss_network_dim"], meta["ss_network_alpha"],
            meta["ss_output_name"]) == ("2", "1.0", "zz")
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_sd_model_name"] == "tiny"
    assert float(meta["ss_training_started_at"]) <= float(meta["ss_training_finished_at"])
    assert not network.unknown_keys
    assert all(set(g) == {"lora_down.weight", "lora_up.weight", "alpha"}
               for g in network.groups.values())
    up = network.groups["lora_unet_down_blocks_0_attentions_0_proj_in"]["lora_up.weight"]
    assert up.shape[1:] == (2, 1, 1) and up.abs().sum() > 0  # trained away from its zero start
    library = LoraLibrary(folder=out.parent, hash_cache=None)
    assert library.find("zz").alias == "zz" and library.find("zz").sd_version == "SD1"


def test_lora_network_starts_at_the_base_model(tiny_path):
    model = load_model(tiny_path).requires_grad_(False)
    network = LoraNetwork(model=model, rank=2, generator=torch.Generator().manual_seed(0))
    x = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    t, context = torch.tensor([500]), torch.randn(1, 77, 32)
    assert torch.equal(network.unet_call(model.unet)(x, t, context), model.unet(x, t, context))


def test_lora_config_is_validated():
    for fields, name in (({"rank": 0}, "rank"), ({"alpha": 0.0}, "alpha"), ({"steps": -1}, "steps"),
                         ({"clip_grad_mode": "huge"}, "clip_grad_mode"),
                         ({"min_snr_gamma": -1.0}, "min_snr_gamma")):
        with pytest.raises(ParamsError) as caught:
            LoraTrainingConfig(**fields).validate()
        assert caught.value.field == name


def test_trained_lora_at_weight_zero_is_bit_identical_and_on_it_changes_the_image(
        tmp_path, tokenizer):
    """Issue #5 in the pixels, with a freshly trained file through the real pipeline."""
    from modules.pipeline.params import Txt2ImgParams
    from modules.pipeline.txt2img import txt2img
    from tests.helpers.checkpoints import finish, tiny_runtime

    runtime = tiny_runtime(tmp_path, {"tiny": TINY_SD15})
    model = load_model(tmp_path / "models" / "Stable-diffusion" / "tiny.safetensors")
    config = LoraTrainingConfig(rank=2, alpha=2.0, text_encoder=True, learn_rate="5e-2",
                                batch_size=2, steps=3)
    items = bar_items("bar", count=4, seed=0, resolution=64)
    drive(lora_training(model, out=runtime.paths.lora_dir / "zz.safetensors", config=config,
                        tokenizer=tokenizer, items=items), progress=False)

    def pixels(prompt: str) -> np.ndarray:
        params = Txt2ImgParams(prompt=prompt, width=64, height=64, steps=3, seed=5, batch_size=2,
                               do_not_save_samples=True)
        result = finish(txt2img(runtime, params))[0]
        assert not result.warnings, result.warnings
        return np.stack([np.asarray(image) for image in result.images])

    prompt = "a small red bar in the center on a blue background"
    plain = pixels(prompt)
    assert np.array_equal(pixels(f"{prompt} <lora:zz:0>"), plain)
    assert not np.array_equal(pixels(f"{prompt} <lora:zz:1>"), plain)
    runtime.jobs.stop()


def test_command_lines_train_from_a_folder_reproducibly(tiny_path, tmp_path):
    from modules.training import train_embedding, train_lora

    data = tmp_path / "data"
    data.mkdir()
    for item in bar_items("bar", count=3, seed=0, resolution=64):
        name = item.filewords.replace(" ", "_")
        Image.fromarray(item.image).save(data / f"{name}.png")
    runs = []
    for run in ("a", "b"):
        out = tmp_path / run / "zz.safetensors"
        train_embedding.main(["--data-root", str(data), "--model", str(tiny_path), "--out",
                              str(out), "--log-dir", str(tmp_path / run / "log"), "--steps", "2",
                              "--batch-size", "2", "--vectors", "1"])
        runs.append(read_embedding(out).vectors["*"])
        assert read_embedding(tmp_path / run / "log" / "zz.pt").step == 2
    assert torch.equal(runs[0], runs[1])  # seeded: the same vectors, bit for bit
    lora = tmp_path / "lora" / "zz.safetensors"
    train_lora.main(["--data-root", str(data), "--model", str(tiny_path), "--out", str(lora),
                     "--steps", "2", "--batch-size", "2", "--rank", "2", "--alpha", "2"])
    assert load_network_file(lora).metadata["ss_steps"] == "2"
