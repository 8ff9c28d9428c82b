"""The shipped bar embedding and LoRA on the demo model, through the real pipeline.

`concept_eval` generates 8 bar prompts x 4 seeds with `processing.txt2img` (DPM++ 2M
Karras, 20 steps, CFG 7, 64x64) and the pixel checker counts the images showing a bar:
with the embedding word or the `<lora:easel-bar:1>` tag, and with the plain prompts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modules.app.cmd_args import parse_args
from modules.networks.embeddings import read_embedding
from modules.networks.files import load_network_file
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from modules.training.concept_eval import bar_images, bar_prompts, bar_rate, with_lora, with_word
from tests.helpers.checkpoints import finish
from tests.helpers.threads import one_thread  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
EMBEDDING = ROOT / "models" / "embeddings" / "easel-bar.safetensors"
LORA = ROOT / "models" / "Lora" / "easel-bar.safetensors"
# Textual inversion only chooses the frozen U-Net's input; the demo U-Net, trained on
# three shapes that are all as wide as high, has no way to draw an elongated one
# (docs/architecture.md, "Training embeddings and LoRAs"). Measured with five recipes
# (4-16 vectors, 400-2000 steps): 6-19 %; the LoRA, which changes the U-Net, 88 %.
FROZEN_UNET_LIMIT = ("an embedding cannot add a shape the frozen demo U-Net cannot draw; "
                     "see docs/architecture.md")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    assert EMBEDDING.is_file() and LORA.is_file(), "the bar concepts must ship with the project"
    data = tmp_path_factory.mktemp("concepts")
    rt = Runtime.create(parse_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent),
                                    "--embeddings-dir", str(EMBEDDING.parent), "--lora-dir",
                                    str(LORA.parent)]))
    rt.ready.set()
    yield rt
    rt.jobs.stop()


def test_shipped_files_are_in_a1111_and_kohya_formats():
    embedding = read_embedding(EMBEDDING)
    assert set(embedding.vectors) == {"*"} and embedding.shape == 128 and embedding.count >= 1
    network = load_network_file(LORA)
    assert network.groups and not network.unknown_keys
    assert all(name.startswith(("lora_unet_", "lora_te_")) for name in network.groups)
    meta = network.metadata
    assert meta["ss_output_name"] == "easel-bar" and meta["ss_base_model_version"] == "sd_v1"
    assert {"ss_network_dim", "ss_network_alpha", "ss_training_started_at"} <= set(meta)
    assert EMBEDDING.stat().st_size < 100_000 and LORA.stat().st_size < 2_000_000


def _pixels(runtime, prompt: str) -> np.ndarray:
    params = Txt2ImgParams(prompt=prompt, width=64, height=64, steps=20, cfg_scale=7.0,
                           sampler_name="DPM++ 2M",
                           scheduler="Karras", seed=3, batch_size=4, do_not_save_samples=True)
    result = finish(txt2img(runtime, params))[0]
    assert not result.warnings, result.warnings
    return np.stack([np.asarray(image) for image in result.images])


def test_lora_at_weight_zero_is_bit_identical_and_on_changes_the_image(runtime):
    prompt = bar_prompts(1)[0]
    plain = _pixels(runtime, prompt)
    assert np.array_equal(_pixels(runtime, with_lora("easel-bar", 0)(prompt)), plain)
    assert not np.array_equal(_pixels(runtime, with_lora("easel-bar")(prompt)), plain)


def test_embedding_word_changes_the_image_and_is_hashed(runtime):
    prompt = bar_prompts(1)[0]
    params = Txt2ImgParams(prompt=with_word("easel-bar")(prompt), width=64, height=64, steps=20,
                           seed=3, do_not_save_samples=True)
    result = finish(txt2img(runtime, params))[0]
    assert "TI hashes: \"easel-bar: " in result.infotexts[0]
    assert not np.array_equal(_pixels(runtime, with_word("easel-bar")(prompt)),
                              _pixels(runtime, prompt))


@pytest.fixture(scope="module")
def rates(runtime) -> dict[str, float]:
    """Bar rates over 8 prompts x 4 seeds for the plain prompts and each concept."""
    found = {"plain": bar_rate(bar_images(runtime)),
             "embedding": bar_rate(bar_images(runtime, with_word("easel-bar"))),
             "lora": bar_rate(bar_images(runtime, with_lora("easel-bar")))}
    print(f"bar rates: {found}")
    return found


@pytest.mark.slow
def test_without_the_concept_bars_are_rare(rates):
    assert rates["plain"] <= 0.10


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=FROZEN_UNET_LIMIT)
def test_embedding_word_draws_a_bar(rates):
    assert rates["embedding"] >= 0.75


@pytest.mark.slow
def test_lora_tag_draws_a_bar(rates):
    assert rates["lora"] >= 0.75
