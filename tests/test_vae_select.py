"""VAE choice per job: sd_vae names a file, Automatic finds one near the checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from modules.infotext import parse_infotext
from modules.models.errors import ModelLoadError
from modules.models.vae_select import resolve_vae
from modules.nn.autoencoder import AutoencoderKL
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("data")
    rt = tiny_runtime(data, {"tiny": TINY_SD15})
    torch.manual_seed(3)
    vae = AutoencoderKL(config=TINY_SD15.vae)
    (data / "models" / "VAE").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()},
              str(data / "models" / "VAE" / "other.safetensors"))
    return rt


def generate(runtime, **overrides):
    params = Txt2ImgParams(prompt="x", width=64, height=64, steps=2, seed=1,
                           do_not_save_samples=True, override_settings=overrides)
    return finish(txt2img(runtime, params))[0]


def test_named_vae_changes_decode_and_is_in_the_infotext(runtime):
    own = generate(runtime)
    other = generate(runtime, sd_vae="other.safetensors")
    assert own.images[0].tobytes() != other.images[0].tobytes()
    parsed = parse_infotext(other.infotexts[0])
    assert parsed["VAE"] == "other.safetensors" and len(parsed["VAE hash"]) == 10
    assert "VAE hash" not in own.infotexts[0]
    # The shared model still decodes with its own VAE afterwards.
    assert generate(runtime).images[0].tobytes() == own.images[0].tobytes()


def test_unknown_vae_is_an_error_naming_it(runtime):
    with pytest.raises(ModelLoadError, match="nope.safetensors.*no such VAE"):
        generate(runtime, sd_vae="nope.safetensors")


def test_automatic_picks_a_vae_named_after_the_checkpoint(tmp_path):
    (tmp_path / "VAE").mkdir()
    (tmp_path / "VAE" / "mymodel.vae.pt").write_bytes(b"")
    (tmp_path / "VAE" / "unrelated.pt").write_bytes(b"")
    found = resolve_vae("Automatic", checkpoint_path=str(tmp_path / "mymodel.safetensors"),
                        vae_dir=tmp_path / "VAE")
    assert found.name == "mymodel.vae.pt"
    assert resolve_vae("None", checkpoint_path="x", vae_dir=tmp_path / "VAE") is None
