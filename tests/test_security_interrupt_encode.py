"""A stop request ends a VAE encode and a ControlNet forward between blocks and tiles.

img2img inputs, hires fix with an image upscaler and inpainting conditioning encode whole
pictures; a ControlNet runs beside the U-Net on every step. Both check the job's
`Cancellation` as the U-Net and the decoder do (issue #17, bounded work).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image

from modules.jobs import JobInterrupted, JobQueue, current_cancellation
from modules.nn.autoencoder import AutoencoderKL, Encoder
from modules.nn.controlnet import ControlNet, ControlNetConfig
from modules.nn.unet import UNetModel
from modules.nn.vae_tiled import tiled_encode
from modules.pipeline.img2img import img2img
from modules.pipeline.params import Img2ImgParams
from tests.helpers.api_runtime import make_runtime
from tests.tiny import TINY_SD15, TINY_VAE


class StopAt:
    """A stop request that arrives at the `at`-th check."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def check(self) -> None:
        self.calls += 1
        if self.calls >= self.at:
            raise JobInterrupted("interrupt")


def test_encoder_stops_between_blocks_plain_and_tiled():
    torch.manual_seed(0)
    vae = AutoencoderKL(config=TINY_VAE).eval()
    stop = StopAt(2)
    with torch.no_grad(), pytest.raises(JobInterrupted):
        vae.encode(torch.zeros(1, 3, 32, 32), stop)
    assert stop.calls == 2  # the second block never ran
    pixels = torch.zeros(1, 3, 64, 64)
    full = tiled_encode(vae, pixels, tile=16, overlap=8, cancel=StopAt(10**6))
    assert full.mean.shape[-2:] == (64 // TINY_VAE.downscale,) * 2
    stop = StopAt(3)
    with pytest.raises(JobInterrupted):
        tiled_encode(vae, pixels, tile=16, overlap=8, cancel=stop)
    assert stop.calls == 3  # the estimate, one tile, then stopped before the next tile


def test_controlnet_stops_between_blocks_and_gets_the_unet_cancellation():
    torch.manual_seed(0)
    model = ControlNet(config=ControlNetConfig.for_unet(TINY_SD15.unet)).eval()
    x, hint = torch.zeros(1, 4, 8, 8), torch.zeros(1, 3, 64, 64)
    context = torch.zeros(1, 7, TINY_SD15.unet.context_dim)
    stop = StopAt(3)
    with torch.no_grad(), pytest.raises(JobInterrupted):
        model(x, hint, torch.tensor([10.0]), context, cancel=stop)
    assert stop.calls == 3
    unet, seen = UNetModel(config=TINY_SD15.unet).eval(), []

    def source(x, t, context, y, cancel=None):
        seen.append(cancel)
        return model(x, hint, t, context, y, cancel=cancel)

    stop = StopAt(2)
    with torch.no_grad(), pytest.raises(JobInterrupted):
        unet(x, torch.tensor([10.0]), context, control=source, cancel=stop)
    assert seen == [stop] and stop.calls == 2  # stopped inside the ControlNet


def test_img2img_interrupted_during_encode_returns_at_once(tmp_path):
    runtime = make_runtime(tmp_path)
    picture = Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8))
    params = Img2ImgParams(init_images=[picture], width=64, height=64, steps=20, seed=3,
                           do_not_save_samples=True)
    encodes = []
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: encodes.append(1) if isinstance(module, Encoder) else None)

    def task():
        current_cancellation().request("interrupt")  # before the encode can have finished
        return (yield from img2img(runtime, params))

    queue = JobQueue()
    try:
        started = time.monotonic()
        job = queue.submit(task)
        result = job.wait(60)
    finally:
        hook.remove()
        queue.stop()
        runtime.jobs.stop()
    assert result.interrupted and result.images == []
    assert encodes == [] and job.progress is None  # stopped in the encoder, before sampling
    assert time.monotonic() - started < 30
