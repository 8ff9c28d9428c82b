"""Memory modes, the checkpoint cache and token merging through the real txt2img pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from modules.app.cmd_args import parse_args
from modules.infotext import parse_infotext
from modules.models.offload import MemoryMode
from modules.pipeline.params import Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.runtime import Runtime
from tests.helpers.checkpoints import finish, write_tiny_checkpoint
from tests.tiny import TINY_SD15


def _runtime(data_dir, *flags: str, models: tuple[str, ...] = ("tiny",)) -> Runtime:
    for seed, name in enumerate(models):
        path = data_dir / "models" / "Stable-diffusion" / f"{name}.safetensors"
        if not path.exists():
            write_tiny_checkpoint(path, TINY_SD15, seed=seed)
    runtime = Runtime.create(parse_args(["--data-dir", str(data_dir), "--no-hashing", *flags]))
    runtime.ready.set()
    return runtime


def _image(runtime, **fields):
    fields = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "seed": 7,
              **fields}
    result = finish(txt2img(runtime, Txt2ImgParams(**fields)))[0]
    return np.asarray(result.images[0]), result.infotexts[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.parametrize("flag", ["--medvram", "--lowvram"])
def test_memory_modes_generate_the_normal_image(data_dir, flag):
    expected, _ = _image(_runtime(data_dir))
    runtime = _runtime(data_dir, flag)
    got, _ = _image(runtime)
    loaded = runtime.models.get()
    assert loaded.placer.mode is MemoryMode(flag.removeprefix("--"))
    np.testing.assert_array_equal(got, expected)


def test_token_merging_is_applied_and_written_to_the_infotext(data_dir):
    runtime = _runtime(data_dir)
    plain, plain_info = _image(runtime)
    merged, info = _image(runtime, override_settings={"token_merging_ratio": 0.5})
    assert "Token merging ratio" not in parse_infotext(plain_info)
    assert float(parse_infotext(info)["Token merging ratio"]) == 0.5
    assert not np.array_equal(plain, merged)
    # Close to the unmerged picture (8-bit pixels, mean absolute difference).
    assert np.abs(plain.astype(int) - merged.astype(int)).mean() < 8


def test_token_merging_ratio_is_checked():
    from modules.settings import Settings, SettingsError

    with pytest.raises(SettingsError, match="token_merging_ratio"):
        Settings().with_overrides({"token_merging_ratio": 1.5})


def test_checkpoint_cache_follows_the_setting(data_dir):
    runtime = _runtime(data_dir, models=("tiny", "other"))
    runtime.settings.update({"sd_checkpoints_limit": 2})
    first = runtime.models.get("tiny")
    runtime.models.get("other")
    assert runtime.models.get("tiny") is first  # still cached: no reload
    runtime.settings.update({"sd_checkpoints_limit": 1})
    runtime.models.get("other")
    assert runtime.models.get("tiny") is not first  # evicted, then loaded again


def test_compile_flag_compiles_the_unet_and_is_written_to_the_infotext(data_dir):
    from modules.pipeline.output import compile_params

    runtime = _runtime(data_dir, "--compile")
    unet = runtime.models.get().model.unet
    assert unet._compiled_call_impl is not None  # nn.Module.compile: compiled on first call
    assert compile_params(runtime) == {"Torch compile": "inductor"}
    assert compile_params(_runtime(data_dir)) == {}
