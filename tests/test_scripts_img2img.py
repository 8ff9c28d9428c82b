"""img2img scripts: Poor man's outpainting, Outpainting mk2, Loopback, SD upscale.

Each runs through `img2img` on a tiny random SD1 model at 64x64 with 2 steps, and SD
upscale once through the HTTP API. Checked: output sizes, the original pixels kept
where the mask leaves them, the seeds and denoising strengths of every pass (from the
infotexts), the SD upscale infotext keys, argument errors naming the field, and that
the runtime's upscaler cache serves two jobs with one loaded model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from modules.api.app import create_api_app
from modules.infotext import parse_infotext
from modules.pipeline.img2img import img2img
from modules.pipeline.params import Img2ImgParams
from modules.scripts.args import ScriptArgsError
from modules.scripts.builtin.loopback import denoising_strength
from modules.scripts.builtin.matched_noise import matched_noise_fill, shaped_noise
from modules.scripts.builtin.outpainting_mk2 import side_pass
from modules.scripts.builtin.tiles import TileGrid, tile_starts
from modules.upscaling import registry as U
from modules.upscaling.rrdbnet import RRDBConfig, RRDBNet
from tests.helpers.api_runtime import decode_png, make_runtime, png_base64
from tests.helpers.checkpoints import finish


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    rt = make_runtime(tmp_path_factory.mktemp("img2img_scripts"))
    yield rt
    rt.jobs.stop()


def picture(width: int = 64, height: int = 64, seed: int = 0) -> Image.Image:
    gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    noise = np.random.RandomState(seed).rand(height, width, 3) * 60
    return Image.fromarray(np.clip(gradient * [1, 0.5, 0.2] + noise, 0, 255).astype(np.uint8))


def run(runtime, script: str, args, **fields):
    fields = {"init_images": [picture()], "width": 64, "height": 64, "steps": 2, "seed": 7,
              "sampler_name": "Euler", "denoising_strength": 0.5, "do_not_save_samples": True,
              "do_not_save_grid": True, "script_name": script, "script_args": args, **fields}
    return finish(img2img(runtime, Img2ImgParams(**fields)))[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def info(text: str) -> dict:
    return parse_infotext(text)


# ------------------------------------------------------------------ tiles


def test_tiles_cover_overlap_and_merge_back_exactly():
    assert tile_starts(128, 64, 16) == [0, 32, 64]
    for size, tile, overlap in ((200, 64, 16), (97, 64, 32), (64, 64, 8), (300, 96, 0)):
        starts = tile_starts(size, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == max(size, tile)
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(128, 64, 64)
    image = picture(150, 90, seed=3)
    for grid in (TileGrid(150, 90, 64, 64, 24), TileGrid(150, 90, 256, 128, 8)):
        assert np.array_equal(pixels(grid.merge(grid.split(image))), pixels(image))
    grid = TileGrid(150, 90, 64, 64, 24)
    black = [Image.new("RGB", (64, 64))] * len(grid.tiles())
    assert pixels(grid.merge(black)).max() == 0


# ------------------------------------------------------------------ poor man's


@pytest.mark.parametrize("directions, size", [(["left", "right", "down"], (128, 96)),
                                              (["up"], (64, 96))])
def test_poor_mans_grows_and_keeps_the_original_exactly(runtime, directions, size):
    result = run(runtime, "Poor man's outpainting",
                 {"pixels": 32, "mask_blur": 0, "direction": directions})
    assert len(result.images) == 1 and result.images[0].size == size
    left = 32 if "left" in directions else 0
    up = 32 if "up" in directions else 0
    out = pixels(result.images[0])
    kept = out[up:up + 64, left:left + 64]
    assert np.abs(kept - pixels(picture())).max() <= 1
    new = np.delete(out, np.s_[left:left + 64], axis=1) if left else out[:up]
    assert new.std() > 0  # the new area was painted, not left black
    assert info(result.infotexts[0])["Masked content"] == "fill"


def test_poor_mans_blur_keeps_pixels_outside_the_blurred_mask(runtime):
    result = run(runtime, "Poor man's outpainting",
                 [32, 2, 1, ["right"]])  # A1111's positional args; masked content "original"
    out = pixels(result.images[0])
    assert result.images[0].size == (96, 64)
    # inset 2*2 px, then a Gaussian (sigma 4) reaching int(2.5*4+0.5) = 10 px further
    original = pixels(picture())
    assert np.abs(out[:, :64 - 14] - original[:, :64 - 14]).max() <= 1
    assert np.abs(out[:, 60:64] - original[:, 60:64]).max() > 1  # the seam was repainted
    assert "Masked content" not in result.infotexts[0] and "Mask blur: 4" in result.infotexts[0]


# ------------------------------------------------------------------ mk2


def test_matched_noise_keeps_known_pixels_and_follows_the_border():
    image = np.zeros((64, 96, 3))
    image[:, :64] = np.array([0.8, 0.4, 0.1]) + np.random.RandomState(0).rand(64, 64, 3) * 0.1
    first = matched_noise_fill(image, (0, 0, 64, 64), falloff=1.0, color_variation=0.05,
                               rng=np.random.default_rng(1))
    again = matched_noise_fill(image, (0, 0, 64, 64), falloff=1.0, color_variation=0.05,
                               rng=np.random.default_rng(1))
    assert np.array_equal(first, again) and np.array_equal(first[:, :64], image[:, :64])
    assert np.allclose(first[:, 64:].mean(axis=(0, 1)), [0.85, 0.45, 0.15], atol=0.05)
    smooth = shaped_noise(64, 64, falloff=3.0, color_variation=0.0, rng=np.random.default_rng(2))
    rough = shaped_noise(64, 64, falloff=0.0, color_variation=1.0, rng=np.random.default_rng(2))
    step = lambda a: np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert step(smooth) < step(rough) / 4
    assert np.allclose(smooth[..., 0], smooth[..., 1])  # no colour variation: grey noise


def test_mk2_side_geometry_pads_to_multiples_of_8():
    geometry = side_pass((60, 52), "left", 8, 2, (64, 64))
    assert geometry.canvas == (72, 56) and geometry.known == (12, 0, 72, 56)
    assert geometry.output == (4, 0, 72, 52) and geometry.strip == (0, 0, 64, 56)
    assert geometry.keep == (14, 0, 72, 56)


@pytest.mark.parametrize("size, directions, expected", [((64, 64), ["right", "down"], (96, 96)),
                                                        ((60, 68), ["left", "up"], (68, 76))])
def test_mk2_grows_by_the_pixels_and_keeps_the_original(runtime, size, directions, expected):
    init = picture(*size, seed=1)
    result = run(runtime, "Outpainting mk2",
                 {"pixels": 32 if size == (64, 64) else 8, "mask_blur": 0,
                  "direction": directions}, init_images=[init])
    out = result.images[0]
    assert len(result.images) == 1 and out.size == expected
    x, y = expected[0] - size[0] if "left" in directions else 0, \
        expected[1] - size[1] if "up" in directions else 0
    kept = pixels(out)[y:y + size[1], x:x + size[0]]
    assert np.abs(kept - pixels(init)).max() <= 1


def test_mk2_batch_gives_a_grid_and_distinct_seeds(runtime):
    result = run(runtime, "Outpainting mk2", [None, 16, 4, ["right"], 1.0, 0.05],
                 batch_size=2, n_iter=2)
    assert [image.size for image in result.images] == [(160, 128)] + [(80, 64)] * 4
    assert result.seeds[1:] == [7, 8, 9, 10]
    assert [int(info(text)["Seed"]) for text in result.infotexts[1:]] == [7, 8, 9, 10]


# ------------------------------------------------------------------ loopback


def test_loopback_curves():
    assert denoising_strength(0.5, 0.9, "Linear", 1, 3) == pytest.approx(0.7)
    assert denoising_strength(0.5, 0.9, "Aggressive", 1, 3) == pytest.approx(0.5 + 0.4 * 2**-0.5)
    assert denoising_strength(0.5, 0.9, "Lazy", 1, 3) == pytest.approx(0.9 - 0.4 * 2**-0.5)
    assert denoising_strength(0.5, 0.9, "Lazy", 2, 3) == pytest.approx(0.9)
    assert denoising_strength(0.5, 0.9, "Linear", 0, 1) == 0.5


def test_loopback_passes_seeds_and_strengths(runtime):
    result = run(runtime, "Loopback", {"loops": 3, "final_denoising_strength": 0.9})
    assert [image.size for image in result.images] == [(192, 64)] + [(64, 64)] * 3
    passes = [info(text) for text in result.infotexts[1:]]
    assert [int(p["Seed"]) for p in passes] == [7, 8, 9]
    assert [float(p["Denoising strength"]) for p in passes] == pytest.approx([0.5, 0.7, 0.9])
    assert all(p["Denoising curve"] == "Linear" and p["Final denoising strength"] == "0.9"
               for p in passes)
    assert result.infotexts[1].rstrip().endswith("Version: v0.1.0")
    assert not np.array_equal(pixels(result.images[1]), pixels(result.images[3]))


def test_loopback_several_runs_return_each_last_pass(runtime):
    result = run(runtime, "Loopback", [2, 0.2, "Aggressive", "None"], n_iter=2, batch_size=3)
    assert [image.size for image in result.images] == [(128, 64), (64, 64), (64, 64)]
    # run n, loop i has seed 7 + n * loops + i; the last loop of each run is returned
    assert [int(info(text)["Seed"]) for text in result.infotexts[1:]] == [8, 10]
    assert [float(info(text)["Denoising strength"]) for text in result.infotexts[1:]] == \
        pytest.approx([0.2, 0.2])


def test_loopback_scale_by_sizes_every_pass_once(runtime):
    result = run(runtime, "Loopback", {"loops": 2}, scale_by=1.5)
    assert [image.size for image in result.images] == [(192, 96), (96, 96), (96, 96)]


# ------------------------------------------------------------------ SD upscale


def test_sd_upscale_size_tiles_and_infotext(runtime):
    result = run(runtime, "SD upscale", {"overlap": 16, "upscaler_index": "Lanczos",
                                         "scale_factor": 2.0}, batch_size=9, n_iter=2)
    assert [image.size for image in result.images] == [(128, 128)] * 2
    assert result.seeds == [7, 8]
    parsed = info(result.infotexts[0])
    assert parsed["SD upscale overlap"] == "16" and parsed["SD upscale upscaler"] == "Lanczos"
    assert "Size: 64x64" in result.infotexts[0] and int(parsed["Seed"]) == 7
    assert result.infotexts[0].rstrip().endswith("Version: v0.1.0")
    same = run(runtime, "SD upscale", ["", 16, 0, 2.0])  # "None": no enlargement
    assert same.images[0].size == (64, 64)


def write_esrgan(folder, name: str) -> None:
    torch.manual_seed(0)
    net = RRDBNet(config=RRDBConfig(num_features=8, num_blocks=1, growth=4, num_upsamples=1))
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.mul_(0.5)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(folder / f"{name}.safetensors"))


def test_two_jobs_share_one_loaded_upscaler_model(runtime, monkeypatch):
    write_esrgan(runtime.paths.esrgan_dir, "tiny-x2")
    assert U.upscalers_of(runtime) is runtime.upscalers
    builds = []
    real_build = U.build_model
    monkeypatch.setattr(U, "build_model",
                        lambda *a, **k: builds.append(a[1]) or real_build(*a, **k))
    for seed in (1, 2):
        result = run(runtime, "SD upscale", {"overlap": 16, "upscaler_index": "tiny-x2",
                                             "scale_factor": 1.5}, seed=seed, batch_size=4)
        assert result.images[0].size == (96, 96)
        assert info(result.infotexts[0])["SD upscale upscaler"] == "tiny-x2"
    assert len(builds) == 1 and runtime.upscalers.cached_names() == ["tiny-x2"]


# ------------------------------------------------------------------ errors and API


@pytest.mark.parametrize("script, args, field", [
    ("Poor man's outpainting", {"direction": ["north"]}, "direction"),
    ("Poor man's outpainting", {"direction": []}, "direction"),
    ("Poor man's outpainting", {"pixels": 64}, "pixels"),
    ("Poor man's outpainting", {"inpainting_fill": 7}, "inpainting_fill"),
    ("Outpainting mk2", {"noise_q": 5.0}, "noise_q"),
    ("Outpainting mk2", {"direction": "sideways"}, "direction"),
    ("Loopback", {"denoising_curve": "Wild"}, "denoising_curve"),
    ("Loopback", {"loops": 0}, "loops"),
    ("Loopback", {"append_interrogation": "CLIP"}, "append_interrogation"),
    ("SD upscale", {"upscaler_index": "Nope"}, "upscaler_index"),
    ("SD upscale", {"overlap": 64}, "overlap"),
])
def test_bad_args_name_the_field(runtime, script, args, field):
    with pytest.raises(ScriptArgsError, match=f"{script}.{field}") as error:
        run(runtime, script, args)
    assert error.value.field == field


def test_scripts_are_img2img_only_and_run_through_the_api(runtime):
    client = TestClient(create_api_app(runtime))
    listed = client.get("/sdapi/v1/scripts").json()
    ours = {"loopback", "outpainting mk2", "poor man's outpainting", "sd upscale"}
    assert ours <= set(listed["img2img"]) and not ours & set(listed["txt2img"])
    body = {"init_images": [png_base64(picture())], "width": 64, "height": 64, "steps": 2,
            "seed": 3, "sampler_name": "Euler", "denoising_strength": 0.4,
            "script_name": "sd upscale", "script_args": ["", 16, 1, 2.0]}  # 1 = Lanczos
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert len(payload["images"]) == 1 and decode_png(payload["images"][0]).size == (128, 128)
    assert "SD upscale upscaler: Lanczos" in json.loads(payload["info"])["infotexts"][0]
    bad = client.post("/sdapi/v1/img2img", json={**body, "script_args": ["", 16, 99, 2.0]})
    assert bad.status_code == 422 and "sd upscale.upscaler_index" in bad.text.lower()
