"""The silhouette ControlNet trainer on a tiny model: its data, its start, a short run, its file."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from modules.models.controlnet_files import load_controlnet
from modules.training.checker import analyze_image, parse_prompt
from modules.training.evaluate import load_model
from modules.training.shapes import ShapeLabels, random_truth
from modules.training.train_controlnet import (
    ControlNetTrainingConfig,
    controlnet_from_unet,
    make_control_sample,
    save_controlnet,
    silhouette,
    train_controlnet,
    training_caption,
)
from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.tiny import TINY_SD15

# A ControlNet's hint encoder downscales by 8, so the tiny VAE must too (four levels).
TINY_8X = replace(TINY_SD15,
                  vae=replace(TINY_SD15.vae, ch=8, ch_mult=(1, 1, 1, 1), norm_num_groups=4))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("base") / "tiny.safetensors", TINY_8X)


def test_silhouette_is_the_shape_in_white_where_the_picture_has_it():
    truth = ShapeLabels(shape="square", color="red", background="blue", position="bottom right",
                        size="large")
    found = analyze_image(silhouette(truth, resolution=64))
    assert (found.shape, found.color, found.background, found.position) == (
        "square", "white", "black", "bottom right")


def test_captions_often_name_another_position_and_never_lie_about_the_rest():
    config = ControlNetTrainingConfig()
    rng = np.random.default_rng(0)
    wrong = omitted = 0
    for _ in range(400):
        truth = random_truth(rng)
        said = parse_prompt(training_caption(truth, rng, config))
        assert (said.shape, said.color, said.background, said.size) == (
            truth.shape, truth.color, truth.background, truth.size)
        wrong += said.position is not None and said.position != truth.position
        omitted += said.position is None
    assert 0.4 < wrong / 400 < 0.6
    assert 0.08 < omitted / 400 < 0.25


def test_samples_are_pure_functions_of_seed_and_index():
    config = ControlNetTrainingConfig(resolution=32)
    a, b = make_control_sample(3, 5, config), make_control_sample(3, 5, config)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[1], make_control_sample(3, 6, config)[1])


def test_a_fresh_controlnet_copies_the_encoder_and_leaves_the_unet_unchanged(tiny_checkpoint):
    unet = load_model(tiny_checkpoint).model.diffusion_model
    controlnet = controlnet_from_unet(unet)
    assert torch.equal(controlnet.input_blocks[1][0].in_layers[2].weight,
                       unet.input_blocks[1][0].in_layers[2].weight)
    x = torch.randn(2, 4, 8, 8)
    t = torch.tensor([10, 500])
    context = torch.randn(2, 77, TINY_8X.unet.context_dim)
    hint = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        residuals = controlnet(x, hint, t, context)
        assert torch.equal(unet(x, t, context, control=residuals), unet(x, t, context))


def test_a_short_run_trains_only_the_controlnet_and_saves_a_loadable_file(
        tiny_checkpoint, tmp_path):
    torch.set_num_threads(1)
    before = load_model(tiny_checkpoint).model.diffusion_model.state_dict()
    config = ControlNetTrainingConfig(steps=3, batch_size=4, dataset_size=8, resolution=64)
    controlnet, losses = train_controlnet(base=tiny_checkpoint, config=config, progress=False)
    assert len(losses) == 3 and all(np.isfinite(losses))
    # The zero convolutions moved off zero: the ControlNet now has an effect.
    assert controlnet.middle_block_out[0].weight.abs().sum() > 0
    path = save_controlnet(controlnet, tmp_path / "cn.safetensors", base_title="tiny")
    assert path.stat().st_mode & 0o777 == 0o644  # a model file to share, not a private one
    assert not path.with_name("cn.safetensors.partial").exists()
    loaded = load_controlnet(str(path), base=TINY_8X.unet)
    for name, tensor in controlnet.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name].float(), tensor.half().float())
    after = load_model(tiny_checkpoint).model.diffusion_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
