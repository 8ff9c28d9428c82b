"""Inpainting: masks, overlay, "Only masked", masked content, and 9-channel models.

Mechanics on tiny random models (the pixel semantics wait for the demo model):
the original is kept outside the blurred mask (within 1/255), the blur is A1111's
separable Gaussian, the crop region is widened to the output's aspect, and a
9-channel U-Net receives `[latent, mask, masked-image latent]` exactly as diffusers'
StableDiffusionInpaintPipeline builds it, on the same random weights.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.imaging import masks as M
from modules.imaging.resize import resize_image
from modules.infotext import parse_infotext
from modules.models.diffusers_keys import unet_diffusers_to_ldm, vae_diffusers_to_ldm
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.unet import UNetModel
from modules.pipeline.image_conditioning import inpaint_image_cond
from modules.pipeline.img2img import img2img
from modules.pipeline.params import Img2ImgParams
from modules.runtime import Runtime
from modules.sampling.denoiser import Denoiser, model_sigmas
from tests.diffusers_configs import unet_diffusers_config, vae_diffusers_config
from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.tiny import TINY_SD15, TINY_VAE

INPAINT = TINY_SD15.as_inpainting()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    data = tmp_path_factory.mktemp("data")
    folder = data / "models" / "Stable-diffusion"
    write_tiny_checkpoint(folder / "tiny.safetensors", TINY_SD15)
    write_tiny_checkpoint(folder / "tiny-inpainting.safetensors", INPAINT, seed=2)
    rt = Runtime.create(parse_args(["--data-dir", str(data)]))
    rt.ready.set()
    return rt


def picture(width=64, height=64) -> Image.Image:
    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 255, (height, width, 3)).astype(np.uint8))


def square_mask(width=64, height=64, box=(20, 24, 40, 44)) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def run(runtime, **fields):
    fields = {"init_images": [picture()], "mask": square_mask(), "width": 64, "height": 64,
              "steps": 3, "seed": 1, "do_not_save_samples": True, "sampler_name": "Euler",
              "denoising_strength": 0.9, **fields}
    generator = img2img(runtime, Img2ImgParams(**fields))
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        return stop.value


def outside(mask: Image.Image) -> np.ndarray:
    return np.asarray(mask) == 0


@pytest.mark.parametrize("full_res", [False, True])
def test_overlay_keeps_the_original_outside_the_blurred_mask(runtime, full_res):
    mask = square_mask()
    result = run(runtime, mask=mask, mask_blur_x=3, mask_blur_y=3, inpaint_full_res=full_res,
                 inpaint_full_res_padding=8)
    blurred = M.blur_mask(mask, 3, 3)
    keep = outside(blurred)
    assert keep.sum() > 1000 and (~keep).sum() > 300
    out, original = np.asarray(result.images[0], int), np.asarray(picture(), int)
    assert np.abs(out - original)[keep].max() <= 1
    assert np.abs(out - original)[~keep].mean() > 5  # the masked area was repainted
    parsed = parse_infotext(result.infotexts[0])
    assert parsed["Mask blur"] == "3"
    assert (parsed["Inpaint area"] == "Only masked") == full_res


def test_inpaint_not_masked_and_alpha_masks(runtime):
    inverted = run(runtime, inpainting_mask_invert=1, mask_blur_x=0, mask_blur_y=0)
    inside = np.asarray(square_mask()) == 255
    out, original = np.asarray(inverted.images[0], int), np.asarray(picture(), int)
    assert np.abs(out - original)[inside].max() <= 1
    assert "Mask mode: Inpaint not masked" in inverted.infotexts[0]
    rgba = picture().convert("RGBA")
    rgba.putalpha(Image.eval(square_mask(), lambda v: 255 - v))
    from_alpha = run(runtime, init_images=[rgba], mask=None, mask_blur_x=0, mask_blur_y=0)
    out = np.asarray(from_alpha.images[0], int)
    assert np.abs(out - original)[~inside].max() <= 1


def test_masked_content_latent_nothing_and_noise(runtime):
    nothing = run(runtime, inpainting_fill=3, denoising_strength=0.5)
    noise = run(runtime, inpainting_fill=2, denoising_strength=0.5)
    assert parse_infotext(nothing.infotexts[0])["Masked content"] == "latent nothing"
    assert parse_infotext(noise.infotexts[0])["Masked content"] == "latent noise"
    assert nothing.images[0].tobytes() != noise.images[0].tobytes()


def test_blur_is_a1111_gaussian():
    assert len(M.gaussian_kernel(4)) == 2 * int(2.5 * 4 + 0.5) + 1 == 21
    mask = Image.new("L", (41, 41), 0)
    mask.putpixel((20, 20), 255)
    blurred = np.asarray(M.blur_mask(mask, 2, 3), float)
    kx, ky = M.gaussian_kernel(2), M.gaussian_kernel(3)
    expected = np.zeros((41, 41))
    expected[20 - len(ky) // 2:20 + len(ky) // 2 + 1, 20 - len(kx) // 2:20 + len(kx) // 2 + 1] = \
        255 * np.outer(ky, kx)
    assert np.abs(blurred - expected).max() <= 1
    assert M.blur_mask(mask, 0, 0).tobytes() == mask.tobytes()


def test_crop_region_is_padded_and_widened_to_the_aspect():
    mask = square_mask(200, 100, (90, 40, 110, 60))
    box = M.crop_region(mask, 10)
    assert box == (80, 30, 120, 70)
    x1, y1, x2, y2 = M.expand_crop_region(box, 128, 64, 200, 100)
    assert (x2 - x1) == 2 * (y2 - y1) and (x1, y1, x2, y2) == (60, 30, 140, 70)
    assert M.crop_region(Image.new("L", (8, 8)), 4) is None
    # Near an edge the box shifts inside the picture instead of shrinking.
    assert M.expand_crop_region((0, 0, 10, 40), 64, 64, 100, 100) == (0, 0, 40, 40)


def test_resize_and_fill_extends_the_edges_for_outpainting():
    image = Image.new("RGB", (64, 32), (10, 20, 30))
    image.paste((200, 0, 0), (0, 0, 64, 1))
    filled = resize_image(2, image, 64, 64)
    red, green, blue = filled.getpixel((5, 3))  # the top band repeats the top row
    assert red > 150 and green < 30 and blue < 30
    assert filled.getpixel((5, 60)) == (10, 20, 30)


def _diffusers_pair():
    from diffusers import AutoencoderKL as DiffusersVAE
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_diffusers_config(INPAINT.unet)).eval()
    vae = DiffusersVAE(**vae_diffusers_config(TINY_VAE)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in [*unet.parameters(), *vae.parameters()]:
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    ours_unet = UNetModel(config=INPAINT.unet).eval()
    ours_unet.load_state_dict(unet_diffusers_to_ldm(unet.state_dict(), INPAINT.unet), strict=True)
    ours_vae = AutoencoderKL(config=TINY_VAE).eval()
    ours_vae.load_state_dict(vae_diffusers_to_ldm(vae.state_dict(), TINY_VAE), strict=True)
    return unet, vae, ours_unet, ours_vae


def test_nine_channel_input_matches_diffusers_inpaint_pipeline():
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_inpaint import (
        retrieve_latents,
    )

    unet, vae, ours_unet, ours_vae = _diffusers_pair()
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:20, 10:26] = 1.0
    loaded = SimpleNamespace(vae=ours_vae, family=INPAINT)
    with torch.no_grad():
        cond = inpaint_image_cond(loaded, image, mask, weight=1.0)
        # diffusers: masked_image = image * (mask < 0.5); mask resized to the latent size.
        fake = SimpleNamespace(vae_scale_factor=TINY_VAE.downscale, vae=vae)
        fake._encode_vae_image = lambda img, generator: retrieve_latents(
            vae.encode(img), sample_mode="argmax") * TINY_VAE.scale_factor
        ref_mask, ref_masked = StableDiffusionInpaintPipeline.prepare_mask_latents(
            fake, mask, image * (mask < 0.5), 1, 32, 32, torch.float32, "cpu", None, False)
    assert cond.shape == (1, 5, 16, 16)
    assert torch.equal(cond[:, :1], ref_mask)
    torch.testing.assert_close(cond[:, 1:], ref_masked, rtol=1e-5, atol=1e-5)
    # The U-Net input: diffusers concatenates [latents, mask, masked_image_latents].
    sigmas = model_sigmas(INPAINT.schedule)
    denoiser = Denoiser(ours_unet, sigmas=sigmas, prediction="eps")
    x = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 7, INPAINT.unet.context_dim, generator=generator)
    sigma = sigmas[500:501]
    with torch.no_grad():
        ours = denoiser(x, sigma, context=context, c_concat=cond)
        c_in = 1 / (sigma**2 + 1) ** 0.5
        eps = unet(torch.cat([x * c_in, ref_mask, ref_masked], dim=1), torch.tensor([500]),
                   encoder_hidden_states=context).sample
    torch.testing.assert_close(ours, x - sigma * eps, rtol=1e-4, atol=1e-4)


def test_inpainting_checkpoint_runs_img2img_and_txt2img(runtime):
    from modules.pipeline.params import Txt2ImgParams
    from modules.pipeline.txt2img import txt2img

    checkpoint = {"sd_model_checkpoint": "tiny-inpainting"}
    result = run(runtime, override_settings=checkpoint)
    assert parse_infotext(result.infotexts[0])["Conditional mask weight"] == "1.0"
    weak = run(runtime, override_settings={**checkpoint, "inpainting_mask_weight": 0.0})
    assert weak.images[0].tobytes() != result.images[0].tobytes()
    generator = txt2img(runtime, Txt2ImgParams(width=64, height=64, steps=2,
                                               override_settings=checkpoint,
                                               do_not_save_samples=True))
    try:
        while True:
            next(generator)
    except StopIteration as stop:
        assert stop.value.images[0].size == (64, 64)
