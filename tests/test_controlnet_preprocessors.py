"""ControlNet preprocessors and hint preparation: shapes, values, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers.api_runtime import png_base64
from tests.helpers.controlnet import use_extension_package

use_extension_package()

from easel_controlnet.canny import canny  # noqa: E402
from easel_controlnet.hint import (  # noqa: E402
    decode_image,
    fit_to_target,
    pixel_perfect_resolution,
)
from easel_controlnet.preprocessors import (  # noqa: E402
    PreprocessorError,
    all_preprocessors,
    get_preprocessor,
    run_preprocessor,
)


def square(size: int = 64, lo: int = 16, hi: int = 48) -> np.ndarray:
    image = np.zeros((size, size, 3), dtype=np.uint8)
    image[lo:hi, lo:hi] = 255
    return image


def test_canny_finds_the_edges_of_a_square() -> None:
    edges = canny(square(), 100, 200)
    assert edges.dtype == bool and edges.shape == (64, 64)
    ys, xs = np.nonzero(edges)
    # Thin edges hugging the square's border, nothing inside or far outside.
    assert ys.min() >= 14 and ys.max() <= 49 and xs.min() >= 14 and xs.max() <= 49
    assert not edges[20:44, 20:44].any()
    for row in (16, 32, 47):  # each side is found
        assert edges[row, 14:18].any() and edges[row, 46:50].any()
        assert edges[14:18, row].any() and edges[46:50, row].any()
    # Non-maximum suppression: the edge is at most 2 pixels thick across a side.
    assert edges[32, 10:22].sum() <= 2
    # Thresholds above the strongest gradient leave nothing.
    assert not canny(square(), 5000, 6000).any()
    assert not canny(np.full((32, 32, 3), 77, np.uint8)).any()


def test_canny_preprocessor_gives_a_white_on_black_rgb_map() -> None:
    entry = get_preprocessor("canny", None)
    out = run_preprocessor(entry, square(), resolution=64)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    assert set(np.unique(out)) <= {0.0, 1.0} and out.max() == 1.0


@pytest.mark.parametrize("name", ["none", "invert", "threshold", "binary", "scribble_xdog",
                                  "color", "shuffle", "tile_resample", "blur_gaussian"])
def test_model_free_preprocessors_shapes_and_ranges(name) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
    entry = get_preprocessor(name, None)
    out = run_preprocessor(entry, image, resolution=64)
    assert out.ndim == 3 and out.shape[2] == 3 and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    if entry.uses_resolution:
        assert min(out.shape[:2]) == 64 or name == "tile_resample"


def test_simple_preprocessors_values() -> None:
    image = np.array([[[0, 0, 0], [200, 200, 200]]], dtype=np.uint8).repeat(64, 0).repeat(32, 1)
    run = lambda name, **kw: run_preprocessor(get_preprocessor(name, None), image, **kw)  # noqa
    assert np.allclose(run("none"), image / 255.0)
    assert np.allclose(run("invert", resolution=64), (255 - image) / 255.0)
    thresholded = run("threshold", resolution=64, a=100)
    assert thresholded[0, 0, 0] == 0.0 and thresholded[0, -1, 0] == 1.0
    binary = run("binary", resolution=64)  # Otsu; dark strokes become white
    assert binary[0, 0, 0] == 1.0 and binary[0, -1, 0] == 0.0
    color = run("color", resolution=64)
    assert color.shape == (64, 64, 3)


def test_shuffle_is_seeded() -> None:
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    entry = get_preprocessor("shuffle", None)
    a = run_preprocessor(entry, image, resolution=64, seed=3)
    b = run_preprocessor(entry, image, resolution=64, seed=3)
    c = run_preprocessor(entry, image, resolution=64, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_inpaint_marks_masked_pixels_and_needs_a_mask() -> None:
    entry = get_preprocessor("inpaint_global_harmonious", None)
    mask = np.zeros((32, 32), dtype=bool)
    mask[:, :16] = True
    out = run_preprocessor(entry, square(32, 8, 24), mask=mask)
    assert (out[:, :16] == -1).all() and (out[:, 16:] >= 0).all()
    with pytest.raises(PreprocessorError, match="mask"):
        run_preprocessor(entry, square(32))


def test_weight_based_preprocessors_report_missing_files(tmp_path) -> None:
    assert all_preprocessors()["depth_midas"].run is None
    with pytest.raises(PreprocessorError, match="dpt_hybrid-midas-501f0c75.pt"):
        get_preprocessor("depth_midas", tmp_path)
    (tmp_path / "dpt_hybrid-midas-501f0c75.pt").write_bytes(b"x")
    with pytest.raises(PreprocessorError, match="not built into Easel"):
        get_preprocessor("depth_midas", tmp_path)
    with pytest.raises(PreprocessorError, match="unknown preprocessor"):
        get_preprocessor("nope", tmp_path)


def test_resize_modes() -> None:
    wide = np.zeros((32, 64, 3), dtype=np.float32)
    wide[:, :, 0] = np.linspace(0, 1, 64)[None]  # red ramp left to right
    wide[0, :, 1] = 1.0  # a green top row to find the border fill
    just = fit_to_target(wide, width=32, height=32, resize_mode="Just Resize")
    crop = fit_to_target(wide, width=32, height=32, resize_mode="Crop and Resize")
    fill = fit_to_target(wide, width=32, height=32, resize_mode="Resize and Fill")
    assert just.shape == crop.shape == fill.shape == (3, 32, 32)
    # Crop keeps the centre half of the ramp; Just Resize squeezes all of it.
    assert crop[0, 16, 0] > 0.2 and crop[0, 16, -1] < 0.8
    assert just[0, 16, 0] < 0.05 and just[0, 16, -1] > 0.95
    # Fill: the picture in the middle rows, the border's median colour above and below.
    assert torch.allclose(fill[:, 0, :], fill[:, 0, :1].expand(-1, 32))
    assert fill[0, 16, -1] > 0.95


def test_pixel_perfect_resolution() -> None:
    # A 1024x512 (w x h) picture for a 512x512 target: cover needs short side 512,
    # fit needs the long side 512, i.e. short side 256.
    assert pixel_perfect_resolution(512, 1024, target_height=512, target_width=512,
                                    resize_mode="Crop and Resize") == 512
    assert pixel_perfect_resolution(512, 1024, target_height=512, target_width=512,
                                    resize_mode="Resize and Fill") == 256


def test_decode_image_accepts_data_urls_and_names_the_field() -> None:
    picture = Image.new("RGB", (8, 4), (10, 20, 30))
    assert decode_image(png_base64(picture, prefix=True)).size == (8, 4)
    with pytest.raises(ValueError, match="image: not a base64"):
        decode_image("not base64 at all")
