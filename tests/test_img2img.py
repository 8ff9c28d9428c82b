"""img2img on a tiny random SD1 checkpoint: A1111's step rule, noise, resize modes, batch.

Mechanics only (random weights): how many steps run and from which sigma, that the
noise multiplier and the settings reach the sampler, sizes, infotext, and the batch
folder function. Pixel semantics wait for the demo model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.app.cmd_args import parse_args
from modules.imaging.color_correction import ColorCorrection, rgb_to_lab
from modules.imaging.save import read_infotext
from modules.infotext import parse_infotext
from modules.pipeline.img2img import img2img, plan_img2img
from modules.pipeline.img2img_batch import composite_sketch, img2img_batch, sketch_mask
from modules.pipeline.params import Img2ImgParams, ParamsError
from modules.pipeline.plan import LatentStart
from modules.pipeline.sample import batch_sigmas
from modules.pipeline.vae_codec import decode_latents, encode_images, images_to_tensor
from modules.runtime import Runtime
from modules.sampling import registry as R
from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.tiny import TINY_SD15


@pytest.fixture(scope="module")
def runtime(tmp_path_factory) -> Runtime:
    data = tmp_path_factory.mktemp("data")
    write_tiny_checkpoint(data / "models" / "Stable-diffusion" / "tiny.safetensors", TINY_SD15)
    rt = Runtime.create(parse_args(["--data-dir", str(data)]))
    rt.ready.set()
    return rt


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = np.random.RandomState(seed).rand(height, width, 3) * 60
    return Image.fromarray(np.clip(gradient * [1, 0.5, 0.2] + noise, 0, 255).astype(np.uint8))


def drive(generator):
    events = []
    try:
        while True:
            events.append(next(generator))
    except StopIteration as stop:
        return stop.value, events


def run(runtime, **fields):
    fields = {"init_images": [picture()], "width": 64, "height": 64, "steps": 10, "seed": 3,
              "do_not_save_samples": True, "sampler_name": "Euler", **fields}
    return drive(img2img(runtime, Img2ImgParams(**fields)))


@pytest.mark.parametrize("strength, fix, expected", [(0.75, False, 8), (0.5, False, 6),
                                                     (0.0, False, 1), (0.5, True, 10)])
def test_step_count_follows_a1111_rule(runtime, strength, fix, expected):
    overrides = {"img2img_fix_steps": True} if fix else {}
    result, events = run(runtime, denoising_strength=strength, override_settings=overrides)
    assert len(events) == expected and events[-1].total_steps == expected
    assert parse_infotext(result.infotexts[0])["Denoising strength"] == str(strength)


def test_schedule_starts_at_a1111_sigma(runtime):
    plan = plan_img2img(runtime, Img2ImgParams(init_images=[picture()], width=64, height=64,
                                               steps=20, sampler_name="Euler"))
    start = LatentStart(init_latent=torch.zeros(1, 4, 32, 32), denoising_strength=0.75, steps=20)
    full = R.compute_sigmas(plan.sampler, plan.scheduler, 20, plan.loaded.sigmas)
    tail = batch_sigmas(plan, start, "cpu")
    assert len(tail) == 17 and torch.equal(tail, full[4:])  # t_enc 15 -> 16 steps from sigmas[4]
    hires = LatentStart(init_latent=start.init_latent, denoising_strength=0.7, steps=20,
                        explicit_steps=True)
    full = R.compute_sigmas(plan.sampler, plan.scheduler, 28, plan.loaded.sigmas)
    assert torch.equal(batch_sigmas(plan, hires, "cpu"), full[8:])  # 28 steps, 20 run


def test_denoising_zero_with_exact_steps_returns_the_encoded_image(runtime):
    result, events = run(runtime, denoising_strength=0.0,
                         override_settings={"img2img_fix_steps": True})
    assert events == []
    loaded = runtime.models.get()
    latent = encode_images(loaded, images_to_tensor([picture()]), noise_seed=3)
    expected = decode_latents(loaded, latent)[0]
    assert result.images[0].tobytes() == expected.tobytes()


def test_noise_multiplier_reaches_the_sampler_and_infotext(runtime):
    plain, _ = run(runtime, denoising_strength=0.6)
    quiet, _ = run(runtime, denoising_strength=0.6, initial_noise_multiplier=0.5)
    assert plain.images[0].tobytes() != quiet.images[0].tobytes()
    assert parse_infotext(quiet.infotexts[0])["Noise multiplier"] == "0.5"
    assert "Noise multiplier" not in plain.infotexts[0]


def test_same_seed_repeats_and_batch_equals_singles(runtime):
    batch, _ = run(runtime, denoising_strength=0.6, batch_size=2, seed=10)
    single, _ = run(runtime, denoising_strength=0.6, seed=11)
    assert batch.seeds == [10, 11]
    assert batch.images[1].tobytes() == single.images[0].tobytes()


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_resize_modes_give_the_requested_size(runtime, mode):
    result, _ = run(runtime, init_images=[picture(96, 64)], resize_mode=mode, width=64,
                    height=80, steps=2, denoising_strength=0.5)
    assert result.images[0].size == (64, 80)


def test_scale_by_sets_the_size(runtime):
    result, _ = run(runtime, init_images=[picture(80, 64)], scale_by=1.5, steps=2,
                    denoising_strength=0.3)
    assert result.images[0].size == (120, 96)


def test_color_correction_moves_colours_toward_the_init_image(runtime):
    init = picture()
    plain, _ = run(runtime, denoising_strength=0.9, steps=3)
    corrected, _ = run(runtime, denoising_strength=0.9, steps=3,
                       override_settings={"img2img_color_correction": True})
    target = rgb_to_lab(np.asarray(init))[..., 1:].mean(axis=(0, 1))
    before = np.abs(rgb_to_lab(np.asarray(plain.images[0]))[..., 1:].mean(axis=(0, 1)) - target)
    after = np.abs(rgb_to_lab(np.asarray(corrected.images[0]))[..., 1:].mean(axis=(0, 1)) - target)
    assert after.sum() < before.sum()


def test_histogram_match_is_exact_on_a_permutation():
    rng = np.random.RandomState(0)
    image = Image.fromarray(rng.randint(0, 255, (32, 32, 3)).astype(np.uint8))
    shuffled = Image.fromarray(np.asarray(image)[::-1, ::-1].copy())
    out = ColorCorrection.from_image(image).apply(shuffled)
    assert np.abs(np.asarray(out, int) - np.asarray(shuffled, int)).max() <= 2


def test_bad_fields_are_named(runtime):
    with pytest.raises(ParamsError, match="init_images"):
        run(runtime, init_images=[])
    with pytest.raises(ParamsError, match="denoising_strength"):
        run(runtime, denoising_strength=1.5)
    with pytest.raises(ParamsError, match="resize_mode"):
        run(runtime, resize_mode=7)
    with pytest.raises(ParamsError, match="inpainting_fill"):
        run(runtime, inpainting_fill=4)


def test_batch_from_directory_with_masks_and_png_info(runtime, tmp_path):
    source, masks, out = tmp_path / "in", tmp_path / "masks", tmp_path / "out"
    source.mkdir(), masks.mkdir()
    info = Image.new("RGB", (64, 64))
    from modules.imaging.save import png_metadata
    picture().save(source / "a.png", pnginfo=png_metadata(info, "a cat\nSteps: 3, Seed: 77, "
                                                                "Sampler: Euler, CFG scale: 5"))
    picture(seed=1).save(source / "b.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (20, 20, 40, 40))
    mask.save(masks / "b.png")
    params = Img2ImgParams(init_images=[picture()], width=64, height=64, steps=2, seed=5,
                           prompt="base", sampler_name="Euler", denoising_strength=0.5)
    results, _ = drive(img2img_batch(runtime, params, input_dir=source, output_dir=out,
                                     mask_dir=masks, png_info_props=("Prompt", "Seed", "Steps")))
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    parsed = parse_infotext(read_infotext(Image.open(out / "a.png")))
    assert parsed["Prompt"] == "base a cat" and parsed["Seed"] == "77" and parsed["Steps"] == "3"
    assert "Mask blur" in read_infotext(Image.open(out / "b.png"))
    assert results[1].seeds == [5]


def test_sketch_compositing_and_sketch_mask():
    base = picture()
    strokes = Image.new("RGBA", base.size, (0, 0, 0, 0))
    strokes.paste((255, 0, 0, 255), (10, 10, 20, 20))
    sketched = composite_sketch(base, strokes)
    assert sketched.getpixel((15, 15)) == (255, 0, 0)
    assert sketched.getpixel((40, 40)) == base.getpixel((40, 40))
    mask = np.asarray(sketch_mask(base, sketched))
    assert mask[15, 15] == 255 and mask[40, 40] == 0
