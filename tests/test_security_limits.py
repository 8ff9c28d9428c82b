"""Bounded work per request (docs/security.md, "Bounded work per request").

Prompt length cap, pixel budget per image and per request, client pictures refused from
their header, a bounded lane for the picture routes that run outside the queue, and
stop requests honoured inside a long step (U-Net blocks, attention chunks, VAE tiles).
The limits are set small on the command line so that every check is fast.
"""

from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.imaging.decode import ImageTooLarge, InvalidImage, open_bounded
from modules.jobs import SIDE_WORK_SLOTS, Cancellation, JobInterrupted, JobQueue
from modules.nn.attention import attention, chunked_attention, sdpa_attention
from modules.nn.autoencoder import AutoencoderKL
from modules.nn.unet import UNetModel
from modules.nn.vae_tiled import tiled_decode
from modules.pipeline.limits import PixelBudget, check_pixel_budget
from modules.pipeline.params import MAX_PROMPT_CHARS, Img2ImgParams, ParamsError, Txt2ImgParams
from modules.pipeline.sample import drive_sampler
from modules.pipeline.txt2img import txt2img
from tests.helpers.api_runtime import SMALL, make_runtime, png_base64
from tests.tiny import TINY_SD15, TINY_VAE

PER_IMAGE, PER_REQUEST, INPUT = 256 * 256, 4 * 256 * 256, 128 * 128
FLAGS = ("--max-pixels-per-image", str(PER_IMAGE), "--max-pixels-per-request", str(PER_REQUEST),
         "--max-input-image-pixels", str(INPUT))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    runtime = make_runtime(tmp_path_factory.mktemp("security-limits"), *FLAGS)
    yield runtime
    runtime.jobs.stop()


@pytest.fixture(scope="module")
def client(runtime):
    return TestClient(create_api_app(runtime))


def refused(response, field: str) -> None:
    assert response.status_code == 422, response.text[:300]
    assert response.json()["detail"].startswith(f"{field}:"), response.json()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces width x height; its pixel data is a few bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def picture(size: int) -> str:
    return png_base64(Image.new("RGB", (size, size), (200, 30, 30)))


# ---------------------------------------------------------------- request limits


def test_prompt_fields_over_the_cap_are_refused(client):
    long = "a" * (MAX_PROMPT_CHARS + 1)
    for field in ("prompt", "negative_prompt"):
        refused(client.post("/sdapi/v1/txt2img", json={**SMALL, field: long}), field)
    refused(client.post("/sdapi/v1/txt2img", json={
        **SMALL, "enable_hr": True, "denoising_strength": 0.5, "hr_scale": 1.0,
        "hr_prompt": long}), "hr_prompt")
    Txt2ImgParams(prompt="a" * MAX_PROMPT_CHARS).validate()  # the cap itself is allowed


def test_pixel_budget_per_image_and_per_request(client):
    txt2img_ = "/sdapi/v1/txt2img"
    refused(client.post(txt2img_, json={**SMALL, "width": 512, "height": 512}), "width")
    hires = {**SMALL, "enable_hr": True, "denoising_strength": 0.5}
    refused(client.post(txt2img_, json={**hires, "hr_scale": 8.0}), "hr_scale")
    refused(client.post(txt2img_, json={**hires, "hr_resize_x": 512}), "hr_resize_x")
    big = {**SMALL, "width": 256, "height": 256}
    refused(client.post(txt2img_, json={**big, "batch_size": 8}), "batch_size")
    refused(client.post(txt2img_, json={**big, "batch_size": 2, "n_iter": 4}), "n_iter")
    scaled = Img2ImgParams(init_images=[Image.new("RGB", (128, 128))], scale_by=4.0)
    with pytest.raises(ParamsError) as error:  # img2img's "resize by" (UI) is counted too
        check_pixel_budget(scaled, PixelBudget(per_image=PER_IMAGE, per_request=PER_REQUEST))
    assert error.value.field == "scale_by"


def test_a_request_inside_the_limits_runs(client):
    response = client.post("/sdapi/v1/txt2img", json={**SMALL, "batch_size": 2, "seed": 1})
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 3  # the grid and two images


# ---------------------------------------------------------------- client pictures


def test_pictures_are_refused_from_their_header():
    with pytest.raises(ImageTooLarge) as error:  # 0.66 MB as a real PNG; 169 MP decoded
        open_bounded(png_header_only(13000, 13000), field="image")
    assert error.value.field == "image" and "13000x13000" in error.value.reason
    with pytest.raises(ImageTooLarge):  # over Pillow's own bomb limit: still "too large"
        open_bounded(png_header_only(20000, 20000), field="image")
    with pytest.raises(InvalidImage):
        open_bounded(b"not a picture", field="image")
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8)).save(buffer, format="PNG")
    assert open_bounded(buffer.getvalue(), field="image", max_pixels=128).size == (16, 8)


def test_every_picture_route_applies_the_input_limit(client):
    import base64

    huge = base64.b64encode(png_header_only(13000, 13000)).decode()
    refused(client.post("/sdapi/v1/png-info", json={"image": huge}), "image")
    over = picture(256)  # 65,536 pixels > the 16,384 allowed here
    refused(client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [over]}),
            "init_images[0]")
    refused(client.post("/sdapi/v1/img2img", json={**SMALL, "init_images": [picture(64)],
                                                  "mask": over}), "mask")
    refused(client.post("/sdapi/v1/extra-single-image", json={"image": over}), "image")
    refused(client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": picture(64), "name": "a"}, {"data": over, "name": "b"}]}),
        "imageList[1]")
    refused(client.post("/sdapi/v1/txt2img", json={
        **SMALL, "enable_hr": True, "denoising_strength": 0.5, "hr_scale": 1.0,
        "firstpass_image": over}), "firstpass_image")


def test_extras_refuses_a_result_over_the_limit(client):
    refused(client.post("/sdapi/v1/extra-single-image", json={
        "image": picture(100), "upscaler_1": "Lanczos", "upscaling_resize": 2}),
        "upscaling_resize")


@pytest.mark.parametrize("path, body", [
    ("/sdapi/v1/png-info", {"image": picture(32)}),
    ("/controlnet/detect", {"controlnet_module": "invert (from white bg & black line)",
                            "controlnet_input_images": [picture(32)],
                            "controlnet_processor_res": 32}),
])
def test_picture_routes_share_a_bounded_lane(client, runtime, path, body):
    lane = runtime.jobs.side_work
    for _ in range(SIDE_WORK_SLOTS):
        assert lane.acquire(timeout=5)
    answers = []
    thread = threading.Thread(target=lambda: answers.append(client.post(path, json=body)))
    thread.start()
    time.sleep(0.5)
    waited = thread.is_alive() and not answers
    for _ in range(SIDE_WORK_SLOTS):
        lane.release()
    thread.join(30)
    assert waited, f"{path} ran while every slot of the lane was taken"
    assert answers and answers[0].status_code == 200, answers[0].text[:300]


# ---------------------------------------------------------------- stopping inside a step


class StopAt:
    """A stop request that arrives at the `at`-th check."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def check(self) -> None:
        self.calls += 1
        if self.calls >= self.at:
            raise JobInterrupted("interrupt")


def test_attention_stops_between_query_chunks():
    q = torch.zeros(2, 1, 32768, 4)  # 2^31 scores: large enough to be chunked
    stop = StopAt(2)
    with pytest.raises(JobInterrupted):
        attention(q, q, q, cancel=stop)
    assert stop.calls == 2  # the first chunk ran, the second was never started


def test_chunked_attention_is_the_same_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 300, 8) for _ in range(3))
    never = Cancellation()
    chunked = chunked_attention(sdpa_attention, q, k, v, chunk=64, cancel=never)
    torch.testing.assert_close(chunked, sdpa_attention(q, k, v), rtol=1e-5, atol=1e-6)


def test_unet_and_vae_stop_between_blocks_and_tiles():
    torch.manual_seed(0)
    unet = UNetModel(config=TINY_SD15.unet).eval()
    x, context = torch.zeros(1, 4, 16, 16), torch.zeros(1, 77, TINY_SD15.unet.context_dim)
    stop = StopAt(3)
    with torch.no_grad(), pytest.raises(JobInterrupted):
        unet(x, torch.tensor([10.0]), context, cancel=stop)
    assert stop.calls == 3
    vae = AutoencoderKL(config=TINY_VAE).eval()
    stop = StopAt(4)
    with pytest.raises(JobInterrupted):
        tiled_decode(vae, torch.zeros(1, 4, 16, 16), tile=8, overlap=2, cancel=stop)
    with torch.no_grad(), pytest.raises(JobInterrupted):
        vae.decode(torch.zeros(1, 4, 8, 8), StopAt(2))


def test_drive_sampler_ends_a_step_that_would_never_end():
    cancel = Cancellation()

    def endless_step():  # a sampler whose first step only ends when stopped
        while True:
            cancel.check()
            time.sleep(0.005)
        yield

    threading.Timer(0.2, cancel.request, args=("interrupt",)).start()
    started = time.monotonic()
    driver = drive_sampler(endless_step(), job_no=0, job_count=1, steps=10, cancel=cancel)
    with pytest.raises(StopIteration) as stop:
        next(driver)
    latents, command = stop.value.value
    assert command == "interrupt" and latents is None  # no step finished: nothing to decode
    assert time.monotonic() - started < 2
    assert cancel.pending() is None  # taken: the batch's decode may still run


def test_interrupt_stops_the_job_inside_its_first_step(runtime):
    queue = JobQueue()
    params = Txt2ImgParams(prompt="x", width=64, height=64, steps=20, n_iter=3, seed=3,
                           do_not_save_samples=True)
    job = queue.submit(lambda: txt2img(runtime, params))
    deadline = time.monotonic() + 60
    while job.started is None:
        assert time.monotonic() < deadline
    queue.interrupt()  # before the first step can have finished
    result = job.wait(60)
    queue.stop()
    assert job.progress is None  # no step completed: it stopped inside the first one
    assert result.interrupted and result.images == []  # and decoded no noise


def test_stop_fails_queued_jobs_and_stops_the_running_one(runtime):
    queue = JobQueue()
    params = Txt2ImgParams(prompt="x", width=64, height=64, steps=1000, seed=3,
                           do_not_save_samples=True)
    running = queue.submit(lambda: txt2img(runtime, params))
    waiting = queue.submit(lambda: txt2img(runtime, params))
    while running.progress is None:
        time.sleep(0.01)
    started = time.monotonic()
    queue.stop(timeout=30)
    assert time.monotonic() - started < 10
    assert running.wait(1).interrupted and running.result.images == []
    with pytest.raises(JobInterrupted):
        waiting.wait(1)


def test_the_ui_refuses_what_the_api_refuses(runtime):
    import gradio as gr

    from webui.requests import checked_request

    with pytest.raises(gr.Error, match="over the limit of 65,536 pixels per image"):
        checked_request(runtime, Txt2ImgParams(width=512, height=512), is_img2img=False)
    with pytest.raises(gr.Error, match="per request"):
        checked_request(runtime, Txt2ImgParams(width=256, height=256, batch_size=2, n_iter=4),
                        is_img2img=False)


def test_limit_flags_must_be_positive():
    from modules.app.cmd_args import parse_args

    for flag in ("--max-pixels-per-image", "--max-pixels-per-request",
                 "--max-input-image-pixels"):
        assert getattr(parse_args([flag, "4096"]), flag[2:].replace("-", "_")) == 4096
        for bad in ("0", "-1", "many"):
            with pytest.raises(SystemExit):
                parse_args([flag, bad])
