"""Seamless tiling (A1111's `tiling`): circular padding on per-job views, never on the model.

Mechanics on tiny random models: the view shares every weight (same tensor objects,
same names for LoRA's `functional_call`), the loaded model's convolutions and weights
are unchanged after a tiled job and a plain job after it is bit-identical to one before;
the wrapped tiled VAE equals the whole-picture circular decode's wrap-around (rolling the
latent rolls the picture); txt2img, hires fix, img2img, the tiled VAE and the API run.
The seam proof on the shipped demo model is `test_demo_tiles_seamlessly` (slow).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.func import functional_call

from modules.nn.autoencoder import AutoencoderKL
from modules.nn.tiling import circular_view, wraps
from modules.nn.vae_tiled import tiled_decode
from modules.pipeline.img2img import img2img
from modules.pipeline.params import Img2ImgParams, Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15, TINY_VAE

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def fingerprint(module: nn.Module) -> tuple:
    """Every conv's padding mode and a hash of every parameter and buffer."""
    modes = tuple(m.padding_mode for m in module.modules() if isinstance(m, nn.Conv2d))
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return modes, digest.hexdigest()


def test_view_shares_weights_and_leaves_the_module_alone():
    torch.manual_seed(0)
    vae = AutoencoderKL(config=TINY_VAE).eval()
    before = fingerprint(vae)
    view = circular_view(vae)
    assert view is not vae and wraps(view) and not wraps(vae)
    assert fingerprint(vae) == before
    assert all(m.padding_mode == "zeros" for m in vae.modules() if isinstance(m, nn.Conv2d))
    original = dict(vae.named_parameters())
    shared = dict(view.named_parameters())
    assert original.keys() == shared.keys()
    assert all(shared[name] is original[name] for name in original)
    # LoRA's path: functional_call finds the same names on the view and puts them back.
    name = "decoder.conv_in.weight"
    z = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        patched = functional_call(view.decoder.conv_in, {"weight": original[name] * 2}, (z,))
        plain = view.decoder.conv_in(z)
    assert not torch.equal(patched, plain)
    assert dict(view.named_parameters())[name] is original[name]
    assert fingerprint(vae) == before


def test_wrapped_tiled_decode_wraps_like_the_whole_picture():
    torch.manual_seed(0)
    vae = circular_view(AutoencoderKL(config=TINY_VAE).eval())
    z = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        whole = vae.decode(z)
        tiled = tiled_decode(vae, z, tile=8, overlap=4, wrap=True)
        rolled = tiled_decode(vae, torch.roll(z, (3, 5), (-2, -1)), tile=8, overlap=4, wrap=True)
    factor = TINY_VAE.downscale
    # Tiles see the opposite border as context: close to the untiled circular decode ...
    assert (tiled - whole).abs().max() < 0.05
    # ... and shifting the latent around the torus shifts the picture (no border anywhere).
    assert (torch.roll(tiled, (3 * factor, 5 * factor), (-2, -1)) - rolled).abs().max() < 0.05


def generate(runtime, **fields):
    fields = {"prompt": "a red circle", "width": 64, "height": 64, "steps": 3, "seed": 3,
              "sampler_name": "Euler", "do_not_save_samples": True, **fields}
    return finish(txt2img(runtime, Txt2ImgParams(**fields)))[0]


def pixels(result) -> np.ndarray:
    return np.stack([np.asarray(image) for image in result.images])


def test_tiled_job_leaves_the_loaded_model_unchanged(runtime):
    plain_before = pixels(generate(runtime))
    loaded = runtime.models.current
    unet, vae = fingerprint(loaded.model.unet), fingerprint(loaded.model.vae)
    tiled = generate(runtime, tiling=True)
    assert "Tiling: True" in tiled.infotexts[0]
    assert not np.array_equal(pixels(tiled), plain_before)
    assert fingerprint(loaded.model.unet) == unet and fingerprint(loaded.model.vae) == vae
    assert not wraps(loaded.model.unet) and not wraps(loaded.vae)
    assert np.array_equal(pixels(generate(runtime)), plain_before)  # bit-identical after


def test_tiling_with_hires_img2img_tiled_vae_and_lora_free_paths(runtime):
    hires = generate(runtime, tiling=True, enable_hr=True, hr_scale=2, hr_upscaler="Latent",
                     denoising_strength=0.5)
    assert hires.images[0].size == (128, 128) and "Tiling: True" in hires.infotexts[0]
    tiled_vae = generate(runtime, tiling=True, width=256, height=256, steps=2,
                         override_settings={"tiled_vae": True, "tiled_vae_decoder_tile": 16,
                                            "tiled_vae_decoder_overlap": 4})
    assert "Tiling: True" in tiled_vae.infotexts[0] and tiled_vae.images[0].size == (256, 256)
    init = Image.fromarray(np.random.RandomState(0).randint(0, 255, (64, 64, 3), np.uint8))
    result = finish(img2img(runtime, Img2ImgParams(
        init_images=[init], prompt="x", width=64, height=64, steps=3, seed=1,
        sampler_name="Euler", denoising_strength=0.6, tiling=True,
        do_not_save_samples=True)))[0]
    assert "Tiling: True" in result.infotexts[0]


def seam_ratios(images, period: int = 32) -> tuple[float, float]:
    """Mean gradient across the wrap seam over the mean gradient across the interior lines
    of the same phase (x, y). The demo's U-Net downsamples twice, so its picture is
    statistically the same only under shifts of 4 latent = 32 px, and its shapes' edges
    gather on those lines: the seam is compared with the lines it is equivalent to."""
    a = np.stack([np.asarray(image, dtype=np.float64) for image in images])
    dx, dy = np.abs(np.diff(a, axis=2)), np.abs(np.diff(a, axis=1))
    seam_x = np.abs(a[:, :, 0] - a[:, :, -1]).mean()
    seam_y = np.abs(a[:, 0] - a[:, -1]).mean()
    return (seam_x / dx[:, :, period - 1::period].mean(),
            seam_y / dy[:, period - 1::period].mean())


@pytest.mark.slow
def test_demo_tiles_seamlessly():
    """Issue 21's proof on the demo model: 32 seeds of a shape that sits at a border."""
    from modules.app.cmd_args import parse_args
    from modules.runtime import Runtime

    assert DEMO.is_file(), "the demo checkpoint must ship with the project"
    runtime = Runtime.create(parse_args(["--data-dir", tempfile.mkdtemp(),
                                         "--ckpt-dir", str(DEMO.parent)]))
    runtime.ready.set()
    ratios = {}
    for tiling in (False, True):
        result = generate(runtime, prompt="a large blue square at the top on a white background",
                          steps=12, cfg_scale=7.0, sampler_name="DPM++ 2M", scheduler="Karras",
                          seed=0, batch_size=32, tiling=tiling)
        ratios[tiling] = seam_ratios(result.images)
    print(f"seam/inside gradient x, y: tiling {ratios[True]}, plain {ratios[False]}")
    assert max(ratios[True]) <= 1.2
    assert min(ratios[False]) > 1.2
