"""Tiled Diffusion (issue #21, item 1) on tiny SD1 and with stand-in denoisers.

- one tile over the whole latent: the image equals plain sampling bit for bit (with
  ControlNet too: the hint crop of a whole-latent tile is the hint);
- several tiles: the U-Net never sees an input larger than a tile batch of tiles (the
  cheap proxy of "memory bounded by the tile size"; bench/bench_tiled_diffusion.py
  measures it), every sampler family runs, hires fix is tiled on both passes;
- blending: MultiDiffusion averages, Mixture of Diffusers weighs by Gaussians, a
  Foreground region replaces the background inside its feathered rectangle;
- ControlNet: each tile's hint is the crop of the whole hint at the tile's window;
- infotext: the extension's "Tiled Diffusion" dict round-trips through paste;
- noise inversion through img2img: its options change what they say.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import modules.pipeline.sample as sample_module
from modules.conditioning.conds import Cond, MultiCond, ScheduledCond
from modules.infotext import parse_infotext
from modules.pipeline.infotext_fields import infotext_to_alwayson
from modules.pipeline.params import Img2ImgParams, Txt2ImgParams
from modules.pipeline.txt2img import txt2img
from modules.sampling import tiled_diffusion as td
from modules.sampling.cfg import CFGDenoiser
from modules.scripts.builtin.tiled_diffusion import (
    TiledDiffusion,
    TiledDiffusionArgs,
    args_from_info,
    settings_info,
)
from tests.helpers.api_runtime import make_runtime, png_base64
from tests.helpers.checkpoints import finish
from tests.helpers.controlnet import use_extension_package, write_tiny_controlnet
from tests.tiny import TINY_SD15

TITLE = "Tiled Diffusion"


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    data = tmp_path_factory.mktemp("tiled")
    write_tiny_controlnet(data / "models" / "ControlNet" / "control_tiny.safetensors",
                          TINY_SD15.unet, scale=0.2)
    rt = make_runtime(data)
    yield rt
    rt.jobs.stop()


def tiled(**fields) -> dict:
    return {TITLE: {"args": {"enabled": True, **fields}}}


def run(runtime, scripts=None, **fields):
    values = dict(prompt="a square", seed=5, width=64, height=64, steps=4,
                  sampler_name="Euler", do_not_save_samples=True)
    values.update(fields)
    params = Txt2ImgParams(alwayson_scripts=scripts or {}, **values)
    return finish(txt2img(runtime, params))[0]


def pixels(result) -> bytes:
    return b"".join(image.tobytes() for image in result.images)


def test_grid_covers_the_latent_with_even_overlap():
    grid = td.tile_grid(40, 56, 16, 16, 8)
    cover = torch.zeros(40, 56)
    for w in grid:
        assert (w.height, w.width) == (16, 16)
        w.of(cover).add_(1)
    assert cover.min() >= 1
    assert td.tile_grid(8, 8, 96, 96, 48) == [td.Window(0, 0, 8, 8)]
    assert all(w.top % 2 == 0 and w.left % 2 == 0 for w in td.tile_grid(40, 56, 16, 16, 5, 2))


@pytest.mark.parametrize("method", td.METHODS)
def test_one_tile_over_the_whole_latent_is_plain_sampling_bit_for_bit(runtime, method):
    plain = run(runtime, batch_size=2)
    one = run(runtime, tiled(method=method, tile_width=96, tile_height=96), batch_size=2)
    assert pixels(one) == pixels(plain)
    assert "Tiled Diffusion" in one.infotexts[0]


def test_one_tile_with_controlnet_is_plain_bit_for_bit(runtime):
    square = np.zeros((64, 64, 3), dtype=np.uint8)
    square[16:48, 8:40] = 255
    unit = {"enabled": True, "module": "canny", "model": "control_tiny",
            "image": png_base64(Image.fromarray(square)), "processor_res": 64}
    control = {"controlnet": {"args": [unit]}}
    plain = run(runtime, control)
    assert pixels(run(runtime, {**control, **tiled()})) == pixels(plain)
    # Several tiles with ControlNet: runs, and differs from the untiled image.
    several = run(runtime, {**control, **tiled(tile_width=4, tile_height=4, overlap=2)})
    assert several.warnings == [] and pixels(several) != pixels(plain)


@pytest.fixture
def seen_shapes(monkeypatch):
    """Shapes of every input the unguided denoiser (the U-Net) gets."""
    shapes: list = []
    make = sample_module.make_denoiser
    monkeypatch.setattr(sample_module, "make_denoiser",
                        lambda plan, device: td.observed(make(plan, device), shapes))
    return shapes


@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M", "Heun"])
def test_the_unet_never_sees_more_than_a_tile(runtime, seen_shapes, sampler):
    result = run(runtime, tiled(tile_width=6, tile_height=4, overlap=2, tile_batch_size=2),
                 width=96, height=64, sampler_name=sampler)
    assert result.images[0].size == (96, 64) and result.warnings == []
    assert seen_shapes and all(shape[-2:] == (4, 6) and shape[0] <= 2 * 2
                               for shape in seen_shapes)


def test_hires_pass_is_tiled_too(runtime, seen_shapes):
    result = run(runtime, tiled(tile_width=6, tile_height=6, overlap=2), enable_hr=True,
                 hr_scale=1.5, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)
    assert result.images[0].size == (96, 96)
    assert all(shape[-2:] == (6, 6) for shape in seen_shapes)


class _Model:
    """A stand-in unguided model: its prediction is the cond's first value everywhere."""

    def __call__(self, x, sigma, *, context, y=None, c_concat=None, **kwargs):
        return context[:, :1, :1].reshape(-1, 1, 1, 1).expand_as(x).clone()


def _cond(value: float) -> MultiCond:
    return MultiCond.single(ScheduledCond.constant(Cond(torch.full((77, 8), value))))


def _cfg(value: float, batch: int = 1) -> CFGDenoiser:
    return CFGDenoiser(_Model(), [_cond(value)] * batch,
                       [ScheduledCond.constant(Cond(torch.full((77, 8), value)))] * batch,
                       cfg_scale=7.0, total_steps=4)


def test_multidiffusion_averages_and_mixture_weighs_by_gaussians():
    x, sigma = torch.zeros(1, 4, 8, 16), torch.ones(1)
    region = td.Region(td.Window(0, 8, 8, 8), [_cond(3.0)], [ScheduledCond.constant(
        Cond(torch.full((77, 8), 3.0)))])
    grid = [td.Window(0, 0, 8, 8)]
    # Left: the job's cond (1) only; right: the region's (3) only; no overlap.
    out = td.TiledDenoiser(_cfg(1.0), grid, regions=[region])(x, sigma)
    assert torch.equal(out[..., :8], torch.ones(1, 4, 8, 8))
    assert torch.equal(out[..., 8:], torch.full((1, 4, 8, 8), 3.0))
    # A background region over the whole latent: the average 2 on the left.
    whole = td.Region(td.Window(0, 0, 8, 16), region.conds, region.unconds)
    out = td.TiledDenoiser(_cfg(1.0), grid, regions=[whole])(x, sigma)
    assert torch.allclose(out[..., :8], torch.full((1, 4, 8, 8), 2.0))
    mixed = td.TiledDenoiser(_cfg(1.0), grid, td.MIXTURE, regions=[whole])(x, sigma)
    # The tile's Gaussian peaks in its centre, the whole-latent window's at column 8.
    assert mixed[0, 0, 4, 3] < 2.0 < mixed[0, 0, 4, 8]


def test_foreground_region_replaces_the_background_with_feathered_weights():
    x, sigma = torch.zeros(2, 4, 16, 16), torch.ones(2)
    fg = td.Region(td.Window(4, 4, 8, 8), [_cond(5.0)] * 2,
                   [ScheduledCond.constant(Cond(torch.full((77, 8), 5.0)))] * 2,
                   foreground=True, feather=0.5)
    cfg = _cfg(1.0, batch=2)
    out = td.TiledDenoiser(cfg, td.tile_grid(16, 16, 8, 8, 4), regions=[fg])(x, sigma)
    assert cfg.step == 1  # one step for all tiles
    assert torch.equal(out[..., 0, :], torch.ones(2, 4, 16))  # outside: the background
    assert torch.allclose(out[..., 8, 8], torch.full((2, 4), 5.0))  # the centre: the region
    edge = float(out[0, 0, 4, 4])
    assert 1.0 < edge < 5.0  # feathered


def test_controlnet_hint_is_cropped_to_each_tile():
    use_extension_package()
    from easel_controlnet.inject import ActiveUnit, ControlProvider

    class Config:
        downscale = 8

    class Net:
        config = Config()
    hint = torch.rand(2, 3, 64, 128)
    unit = ActiveUnit(model=Net(), hint=hint, weight=1.0)
    views = [td.TileView(1, td.Window(2, 4, 4, 6), 8, 16),
             td.TileView(0, td.Window(0, 0, 4, 6), 8, 16)]
    provider = ControlProvider([unit], [0, 1, 0, 1], [False, False, True, True])
    narrowed = provider.for_tiles(views)
    crops = narrowed.units[0].hint
    assert crops.shape == (2, 3, 32, 48)
    assert torch.equal(crops[0], hint[1, :, 16:48, 32:80])
    assert torch.equal(crops[1], hint[0, :, 0:32, 0:48])
    assert narrowed.row_images == provider.row_images


def test_infotext_round_trips_through_paste(runtime):
    regions = [{"x": 0.0, "y": 0.0, "w": 0.5, "h": 1.0, "prompt": "a red circle",
                "blend_mode": "Background", "seed": 7},
               {"x": 0.5, "y": 0.0, "w": 0.5, "h": 1.0, "prompt": "a blue square",
                "blend_mode": "Foreground", "feather_ratio": 0.3}]
    args = TiledDiffusionArgs(enabled=True, method=td.MIXTURE, tile_width=64, tile_height=80,
                              overlap=16, tile_batch_size=2, enable_bbox_control=True,
                              regions=regions)
    result = run(runtime, {TITLE: {"args": {**vars(args)}}}, width=128, height=64)
    text = result.infotexts[0]
    parsed = parse_infotext(text)
    info = json.loads(parsed["Tiled Diffusion"])
    assert info["Method"] == td.MIXTURE and info["Tile tile width"] == 64
    assert info["Region control"]["Region 2"]["blend_mode"] == "Foreground"
    pasted = infotext_to_alwayson(parsed, [TiledDiffusion()])[TITLE]["args"]
    restored = args_from_info(TiledDiffusionArgs(), pasted["pasted"])
    assert settings_info(restored, False) == settings_info(args, False)
    again = run(runtime, {TITLE: {"args": pasted}}, width=128, height=64)
    assert pixels(again) == pixels(result)


def test_extra_network_tags_in_a_region_prompt_are_named_not_silently_dropped(runtime):
    regions = [{"x": 0.0, "y": 0.0, "w": 0.5, "h": 1.0, "prompt": "a red circle <lora:bar:0.8>"}]
    tagged = run(runtime, tiled(tile_width=8, tile_height=8, overlap=4,
                                enable_bbox_control=True, regions=regions))
    assert any("<lora:bar>" in w and "region prompt is not applied" in w
               for w in tagged.warnings), tagged.warnings
    # The tag is removed before encoding: the image equals the region without it.
    regions[0]["prompt"] = "a red circle "
    untagged = run(runtime, tiled(tile_width=8, tile_height=8, overlap=4,
                                  enable_bbox_control=True, regions=regions))
    assert untagged.warnings == [] and pixels(untagged) == pixels(tagged)


def _img2img(runtime, scripts):
    from modules.pipeline.img2img import img2img

    gradient = np.linspace(0, 255, 64, dtype=np.uint8)
    picture = np.stack([np.tile(gradient, (64, 1))] * 3, axis=-1)
    picture[20:44, 20:44] = [200, 40, 40]
    params = Img2ImgParams(init_images=[Image.fromarray(picture)], prompt="a square",
                           seed=3, width=64, height=64, steps=6, sampler_name="Euler",
                           denoising_strength=0.5, do_not_save_samples=True,
                           alwayson_scripts=scripts)
    return finish(img2img(runtime, params))[0]


def test_noise_inversion_options_change_what_they_say(runtime):
    base = dict(tile_width=4, tile_height=4, overlap=2)
    plain = pixels(_img2img(runtime, tiled(**base)))
    inverted = _img2img(runtime, tiled(**base, noise_inverse=True,
                                       noise_inverse_renoise_strength=0.0))
    info = json.loads(parse_infotext(inverted.infotexts[0])["Tiled Diffusion"])
    assert info["NoiseInv"] is True and info["NoiseInv Steps"] == 10
    assert pixels(inverted) != plain
    renoised = _img2img(runtime, tiled(**base, noise_inverse=True,
                                       noise_inverse_renoise_strength=1.0))
    retouched = _img2img(runtime, tiled(**base, noise_inverse=True,
                                        noise_inverse_renoise_strength=0.0,
                                        noise_inverse_retouch=4.0))
    assert len({pixels(inverted), pixels(renoised), pixels(retouched)}) == 3


def test_flow_latents_tile_like_any_other():
    """A rectified-flow denoiser (SD3.5 / Flux.1's `FlowDenoiser`) behind the CFG denoiser:
    the wrapper says `is_flow` (the samplers pick their flow form), tile origins stay even
    (2x2 patches), and with a pixel-local velocity the tiled D equals the untiled one."""
    from modules.sampling import flow as FL
    from modules.sampling import registry as R

    def velocity(x, t, *, context, y=None, **kwargs):
        return 0.5 * x - context[:, :1, :1].reshape(-1, 1, 1, 1)

    denoiser = FL.FlowDenoiser(velocity, sigmas=FL.FlowSchedule(shift=3.0).table())
    cfg = CFGDenoiser(denoiser, [_cond(0.2)], [ScheduledCond.constant(Cond(torch.zeros(77, 8)))],
                      cfg_scale=4.0, total_steps=4)
    grid = td.tile_grid(12, 20, 6, 6, 3, align=2)
    assert all(w.top % 2 == 0 and w.left % 2 == 0 for w in grid)
    model = td.TiledDenoiser(cfg, grid, td.MIXTURE, tile_batch_size=3)
    assert model.is_flow
    x = torch.randn(1, 16, 12, 20, generator=torch.Generator().manual_seed(0))
    sigma = torch.full((1,), 0.7)
    torch.testing.assert_close(model(x, sigma), cfg(x, sigma), rtol=1e-5, atol=1e-6)
    sigmas = torch.tensor([1.0, 0.6, 0.3, 0.0])
    generator = R.start_sampler(R.find_sampler("Euler"), model, x, sigmas)
    steps = list(generator)
    assert len(steps) == 3 and torch.isfinite(steps[-1].x).all()


def test_bench_runs_on_the_tiny_unet():
    from bench import bench_tiled_diffusion

    rows = bench_tiled_diffusion.main(["--tiny", "--size", "256", "--tile", "16", "--overlap",
                                       "8", "--modes", "tiled", "--timeout", "300"])
    assert rows[0]["largest_unet_input"] == [8, 4, 16, 16] and rows[0]["unet_calls"] == 3
    assert rows[0]["finite"] and rows[0]["peak_rss_gb"] > 0


def test_bench_memory_run_stops_after_the_calls_asked():
    from bench import bench_tiled_diffusion

    rows = bench_tiled_diffusion.main(["--tiny", "--size", "256", "--tile", "16", "--overlap",
                                       "8", "--modes", "tiled", "--timeout", "300",
                                       "--max-unet-calls", "2"])
    row = rows[0]
    assert row["stopped_after_calls"] == 2 and row["unet_calls"] == 2
    assert len(row["peak_rss_gb_after_each_call"]) == 2 and row["finite"] is None
