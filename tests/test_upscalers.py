"""ESRGAN upscalers from files in the real key layouts, tiling, extras, and their API.

A random RRDBNet is saved in three layouts (Real-ESRGAN/BasicSR with `params_ema`,
original ESRGAN "old" `model.N`, ESRGAN "new-arch" `RRDB_trunk`), as .pth pickles and
.safetensors; every file must load through the safe loaders, give the same output,
and enlarge by its scale factor. Tiled and untiled results must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from modules.pipeline.params import ParamsError
from modules.settings import Settings
from modules.upscaling.extras import ExtrasParams, run_extras, run_extras_batch
from modules.upscaling.keys import config_from, layout, to_basicsr
from modules.upscaling.registry import (
    SpandrelAccess,
    UpscalerError,
    UpscalerRegistry,
    build_model,
    image_to_tensor,
    load_weights,
    tiled_apply,
)
from modules.upscaling.rrdbnet import RRDBConfig, RRDBNet

CONFIG = RRDBConfig(num_features=8, num_blocks=2, growth=4)


def random_net(config: RRDBConfig = CONFIG, seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    net = RRDBNet(config=config).eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(0.5)
    return net


def to_old(state: dict, config: RRDBConfig) -> dict:
    """BasicSR names -> the original ESRGAN `model.N` layout."""
    n = config.num_upsamples
    names = {"conv_first": "model.0", "conv_body": f"model.1.sub.{config.num_blocks}",
             "conv_hr": f"model.{3 * n + 2}", "conv_last": f"model.{3 * n + 4}"}
    names.update({f"conv_up{k + 1}": f"model.{3 * k + 3}" for k in range(n)})
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "body":
            out[f"model.1.sub.{parts[1]}.RDB{parts[2][3]}.{parts[3]}.0.{parts[4]}"] = value
        else:
            out[f"{names[parts[0]]}.{parts[1]}"] = value
    return out


def to_new_arch(state: dict) -> dict:
    names = {"conv_body": "trunk_conv", "conv_hr": "HRconv"}
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "body":
            out[f"RRDB_trunk.{parts[1]}.RDB{parts[2][3]}.{parts[3]}.{parts[4]}"] = value
        else:
            name = names.get(parts[0], parts[0]).replace("conv_up", "upconv")
            out[f"{name}.{parts[1]}"] = value
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("ESRGAN")
    state = {k: v.clone() for k, v in random_net().state_dict().items()}
    torch.save({"params_ema": state}, root / "RealESRGAN_x4plus.pth")
    torch.save(to_old(state, CONFIG), root / "4x_old.pth")
    save_file(to_new_arch(state), str(root / "4x_newarch.safetensors"))
    x2 = RRDBConfig(num_features=8, num_blocks=1, growth=4, unshuffle=2)
    torch.save({"params": random_net(x2, seed=1).state_dict()}, root / "RealESRGAN_x2plus.pth")
    save_file({"some.other.weight": torch.zeros(3, 3)}, str(root / "SwinIR_x4.safetensors"))
    return root


def picture(size=(24, 20)) -> Image.Image:
    return Image.fromarray(np.random.RandomState(0).randint(0, 255, (*size[::-1], 3),
                                                            dtype=np.uint8))


def test_layouts_are_recognised_and_configs_read_from_shapes():
    state = random_net().state_dict()
    assert layout(state) == "basicsr"
    assert layout(to_old(state, CONFIG)) == "old"
    assert layout(to_new_arch(state)) == "new_arch"
    for converted in (to_basicsr(to_old(state, CONFIG)), to_basicsr(to_new_arch(state))):
        assert set(converted) == set(state)
        assert config_from(converted) == CONFIG


def test_every_layout_gives_the_same_upscale(folder):
    registry = UpscalerRegistry(folders=[folder])
    settings = Settings().with_overrides({"ESRGAN_tile": 0})
    image = picture()
    outputs = [registry.run_model(image, name, settings)
               for name in ("RealESRGAN_x4plus", "4x_old", "4x_newarch")]
    assert outputs[0].size == (96, 80)
    assert outputs[0].tobytes() == outputs[1].tobytes() == outputs[2].tobytes()
    x2 = registry.run_model(image, "RealESRGAN_x2plus", settings)
    assert x2.size == (48, 40) and registry.load("RealESRGAN_x2plus").scale == 2


def test_tiled_matches_untiled(folder):
    registry = UpscalerRegistry(folders=[folder])
    model = registry.load("RealESRGAN_x4plus")
    x = image_to_tensor(picture((40, 36)))
    whole = tiled_apply(model.network, x, scale=4, tile=0, overlap=0)
    tiled = tiled_apply(model.network, x, scale=4, tile=16, overlap=8)
    assert tiled.shape == whole.shape == (1, 3, 144, 160)
    difference = (tiled - whole).abs()
    assert difference.mean() < 2 / 255 and difference.max() < 0.1


def test_upscale_reaches_the_target_size_and_lists_models(folder):
    registry = UpscalerRegistry(folders=[folder])
    assert registry.names()[:3] == ["None", "Lanczos", "Nearest"]
    assert "4x_old" in registry.names() and "RealESRGAN_x2plus" in registry.names()
    settings = Settings()
    image = picture((32, 32))
    assert registry.upscale(image, 2.0, "4x_old", settings).size == (64, 64)
    assert registry.upscale(image, 3.0, "RealESRGAN_x2plus", settings).size == (96, 96)
    assert registry.upscale(image, 1.5, "Lanczos", settings).size == (48, 48)
    nearest = registry.upscale(image, 2.0, "Nearest", settings)
    assert nearest.getpixel((1, 1)) == image.getpixel((0, 0))


def test_without_spandrel_esrgan_runs_on_rrdbnet_and_others_are_refused(folder):
    """The fallback order when spandrel is neither importable nor in a worker."""
    absent = SpandrelAccess(in_process=False, worker=None, reason="spandrel is not installed")
    esrgan = folder / "4x_old.pth"
    model = build_model(load_weights(esrgan), esrgan, torch.device("cpu"), spandrel=absent)
    assert isinstance(model.network, RRDBNet) and model.scale == 4
    other = folder / "SwinIR_x4.safetensors"
    with pytest.raises(UpscalerError, match=r"SwinIR_x4\.safetensors: .*spandrel is not "
                                            r"installed.*\.venv-upscalers"):
        build_model(load_weights(other), other, torch.device("cpu"), spandrel=absent)
    with pytest.raises(UpscalerError, match="unknown upscaler"):
        UpscalerRegistry(folders=[folder]).load("nope")


def test_upscaler_folders_follow_a1111_and_their_flags(tmp_path):
    from modules.app.cmd_args import parse_args
    from modules.paths import Paths

    moved = tmp_path / "elsewhere"
    paths = Paths.from_args(parse_args(["--models-dir", str(tmp_path / "models"),
                                        "--dat-models-path", str(moved)]))
    assert [p.name for p in paths.upscaler_dirs] == ["ESRGAN", "RealESRGAN", "SwinIR",
                                                     "elsewhere", "HAT", "ScuNET", "BSRGAN"]
    assert paths.upscaler_dirs[0] == paths.esrgan_dir
    for folder in ("ESRGAN", "HAT"):
        (tmp_path / "models" / folder).mkdir(parents=True)
    torch.save({"params_ema": random_net().state_dict()}, tmp_path / "models" / "HAT" / "a.pth")
    moved.mkdir()
    torch.save(random_net().state_dict(), moved / "b.pth")
    torch.save(random_net().state_dict(), tmp_path / "models" / "ESRGAN" / "a.pth")
    registry = UpscalerRegistry(folders=paths.upscaler_dirs)
    assert registry.names()[3:] == ["a", "b"]
    assert registry.model_files()[0].parent.name == "ESRGAN"  # the first folder wins a name


def test_a_file_that_is_not_a_model_is_named(folder, tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(UpscalerError, match=r"broken\.pth: cannot read"):
        UpscalerRegistry(folders=[tmp_path]).load("broken")
    state = random_net().state_dict()
    state["body.0.rdb1.conv2.weight"] = torch.zeros(4, 3, 3, 3)  # a shape that does not fit
    save_file(state, str(tmp_path / "bent.safetensors"))
    absent = SpandrelAccess(in_process=False, worker=None, reason="not installed")
    with pytest.raises(UpscalerError, match=r"bent\.safetensors: not a consistent ESRGAN"):
        build_model(state, tmp_path / "bent.safetensors", torch.device("cpu"), spandrel=absent)


def test_extras_scale_by_scale_to_and_second_upscaler(folder):
    registry = UpscalerRegistry(folders=[folder])
    settings = Settings()
    image = picture((32, 24))
    out, info = run_extras(registry, image, ExtrasParams(upscaler_1="Lanczos",
                                                         upscaling_resize=2), settings)
    assert out.size == (64, 48)
    assert info == {"Postprocess upscale by": 2, "Postprocess upscaler": "Lanczos"}
    out, info = run_extras(registry, image, ExtrasParams(
        resize_mode=1, upscaling_resize_w=40, upscaling_resize_h=40, upscaler_1="4x_old",
        upscaler_2="Nearest", extras_upscaler_2_visibility=0.5), settings)
    assert out.size == (40, 40) and info["Postprocess crop to"] == "40x40"
    assert info["Postprocess upscaler 2 visibility"] == 0.5
    same, _ = run_extras(registry, image, ExtrasParams(), settings)
    assert same.tobytes() == image.tobytes()
    outs, _ = run_extras_batch(registry, [image, image], ExtrasParams(upscaler_1="Nearest"),
                               settings)
    assert [o.size for o in outs] == [(64, 48)] * 2
    with pytest.raises(ParamsError, match="upscaler_1"):
        run_extras(registry, image, ExtrasParams(upscaler_1="missing"), settings)
    with pytest.raises(ParamsError, match="gfpgan_visibility"):
        run_extras(registry, image, ExtrasParams(gfpgan_visibility=0.5), settings)
