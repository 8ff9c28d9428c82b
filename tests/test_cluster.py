"""Cluster mode on a local Ray instance: two replicas of the demo model, one thread each.

One ingress (`--ray --replicas 2 --replica-threads 1 --api-auth`) is started for the
module; a plain single-process server over its own data folder is the reference. The
proofs of issue #19: images bit-identical to the single process for 16 concurrent mixed
requests; options reaching both replicas; a replica killed mid-job costing a retry, not
a hang; progress and interrupt by `id_task`; a checkpoint that cannot load answered as
usual with the replica kept; saving done once by the ingress; every route behind auth.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modules.api.app import create_api_app
from modules.app.cmd_args import parse_args
from modules.runtime import Runtime
from tests.test_security_auth import basic, walk_unauthenticated

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "models" / "Stable-diffusion" / "easel-demo.safetensors"
LORAS = ROOT / "models" / "Lora"
AUTH = basic("ops", "s3cret")
START_S = 240  # the replicas come up in about 30 s here; generous for a loaded CI machine
KILLED_JOB_ENDS_S = 90  # the "stated time" for a job whose replica was killed


def server_args(data: Path, ckpts: Path, *extra: str):
    return parse_args(["--data-dir", str(data), "--ckpt-dir", str(ckpts), "--lora-dir",
                       str(LORAS), "--nowebui", "--api", "--api-auth", "ops:s3cret", *extra])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    """The demo checkpoint, and a damaged one a job can ask for."""
    folder = tmp_path_factory.mktemp("ckpts")
    shutil.copy(DEMO, folder / DEMO.name)
    (folder / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ckpts):
    """(ingress runtime, its client, the Cluster); stopped at the end, Ray included."""
    from modules.cluster.start import begin_cluster

    data = tmp_path_factory.mktemp("ingress")
    runtime = Runtime.create(server_args(data, ckpts, "--ray", "--replicas", "2",
                                         "--replica-threads", "1"))
    started = begin_cluster(runtime)
    ray_processes = own_ray_processes()
    assert ray_processes, "the local Ray instance's daemons should be this process's children"
    assert started.dispatcher.connected.wait(START_S), "the replicas did not come up"
    assert started.dispatcher.failure is None, started.dispatcher.failure
    with TestClient(create_api_app(runtime)) as client:
        yield runtime, client, started
        runtime.jobs.cancel_all()  # a failed test's jobs must not hold the client open
    started.stop()
    import ray

    assert not ray.is_initialized()
    gone, alive = psutil.wait_procs(ray_processes, timeout=30)
    assert not alive, f"Ray processes left after stopping: {[p.name() for p in alive]}"


@pytest.fixture(scope="module")
def plain(tmp_path_factory, ckpts):
    """The reference: a single-process server (one job at a time on its own queue), with one
    torch thread as each replica has: CPU reductions split over another number of threads
    round differently (1/255 in a few pixels here), so bit-identity compares like with like."""
    import torch

    runtime = Runtime.create(server_args(tmp_path_factory.mktemp("plain"), ckpts))
    runtime.ready.set()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TestClient(create_api_app(runtime)) as client:
            yield runtime, client
    finally:
        torch.set_num_threads(threads)


def own_ray_processes() -> list[psutil.Process]:
    """This test process's Ray daemons (GCS, raylet, ...), started by `ray.init`."""
    children = psutil.Process().children(recursive=True)
    return [p for p in children if any(name in " ".join(p.cmdline()) for name in
                                        ("gcs_server", "raylet"))]


def wait_for_replicas(client: TestClient, runtime, count: int = 2) -> None:
    """Until `count` replicas serve (one killed by a test comes back, and the ingress's
    router must hear of it): `count` concurrent short jobs land on `count` replicas."""
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        ids = [f"warm-{index}-{time.time_ns()}" for index in range(count)]
        with ThreadPoolExecutor(max_workers=count) as pool:
            list(pool.map(lambda job_id: txt2img(client, prompt="x", steps=8, width=64,
                                                 height=64, force_task_id=job_id), ids))
        if len({runtime.jobs.find(job_id).worker for job_id in ids}) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{count} replicas did not serve within {START_S} s")


def txt2img(client: TestClient, **body) -> dict:
    response = client.post("/sdapi/v1/txt2img", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    return response.json()


def pixels(answer: dict) -> list[np.ndarray]:
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))
            for text in answer["images"]]


def infotexts(answer: dict) -> list[str]:
    import json

    return json.loads(answer["info"])["infotexts"]


def mixed_requests() -> list[dict]:
    """16 requests: prompts, seeds, a LoRA tag, a CLIP-skip override, batch and count."""
    prompts = ["a red circle", "a blue square on white", "a green triangle",
               "a yellow star <lora:easel-bar:0.8>"]
    bodies = []
    for index in range(16):
        body = {"prompt": prompts[index % 4], "seed": 1000 + index, "steps": 6 + index % 3,
                "width": 64, "height": 64, "sampler_name": ["Euler a", "DPM++ 2M"][index % 2]}
        if index % 5 == 0:
            body["override_settings"] = {"CLIP_stop_at_last_layers": 2}
        if index % 7 == 0:
            body.update(batch_size=2, n_iter=2)
        bodies.append(body)
    return bodies


def test_concurrent_requests_equal_the_single_process(cluster, plain):
    runtime, client, _ = cluster
    bodies = mixed_requests()
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda body: txt2img(client, **body), bodies))
    for body, answer in zip(bodies, answers):
        reference = txt2img(plain[1], **body)
        assert infotexts(answer) == infotexts(reference), body
        for got, want in zip(pixels(answer), pixels(reference), strict=True):
            assert np.array_equal(got, want), f"pixels differ for {body}"
    assert "<lora:easel-bar:0.8>" in infotexts(answers[3])[0]
    assert "Lora hashes" in infotexts(answers[3])[0]  # the LoRA was applied on a replica
    assert "Clip skip: 2" in infotexts(answers[0])[0]


def test_options_set_through_the_api_reach_both_replicas(cluster, plain):
    runtime, client, _ = cluster
    wait_for_replicas(client, runtime)
    response = client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 2},
                           headers=AUTH)
    assert response.status_code == 200, response.text
    try:
        bodies = [{"prompt": "a blue square", "seed": 7 + i, "steps": 8, "width": 64,
                   "height": 64, "force_task_id": f"opt-{i}-{time.time_ns()}"}
                  for i in range(6)]
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(lambda body: txt2img(client, **body), bodies))
        workers = {runtime.jobs.find(body["force_task_id"]).worker for body in bodies}
        assert len(workers) == 2, f"both replicas should have served: {workers}"
        for body, answer in zip(bodies, answers):
            assert "Clip skip: 2" in infotexts(answer)[0]
            reference = txt2img(plain[1], **{**body, "force_task_id": None,
                                            "override_settings": {"CLIP_stop_at_last_layers": 2}})
            assert np.array_equal(pixels(answer)[0], pixels(reference)[0])
    finally:
        client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1}, headers=AUTH)


def start_in_background(client: TestClient, body: dict) -> tuple[threading.Thread, dict]:
    """Send `body` from a thread; the answer (status, json, seconds) lands in the dict."""
    outcome: dict = {}

    def send() -> None:
        started = time.monotonic()
        response = client.post("/sdapi/v1/txt2img", json=body, headers=AUTH)
        outcome.update(status=response.status_code, body=response.json(),
                       seconds=time.monotonic() - started)

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    return thread, outcome


def wait_until_running(runtime, job_id: str, *, step: int = 2, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = runtime.jobs.find(job_id)
        if job is not None and job.progress is not None and job.progress.step >= step:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not start within {timeout} s")


def test_a_replica_killed_mid_job_costs_a_retry_not_a_hang(cluster, plain):
    runtime, client, _ = cluster
    wait_for_replicas(client, runtime)
    job_id = f"doomed-{time.time_ns()}"
    body = {"prompt": "a red circle", "seed": 99, "steps": 150, "width": 64, "height": 64,
            "force_task_id": job_id}
    thread, outcome = start_in_background(client, body)
    job = wait_until_running(runtime, job_id)
    first_worker = job.worker
    os.kill(int(first_worker.rsplit(":", 1)[1]), signal.SIGKILL)  # as the OOM killer would
    thread.join(KILLED_JOB_ENDS_S)
    assert not thread.is_alive(), f"the job did not end within {KILLED_JOB_ENDS_S} s"
    if outcome["status"] == 200:  # retried on the other replica: the same picture
        reference = txt2img(plain[1], **{**body, "force_task_id": None})
        assert np.array_equal(pixels(outcome["body"])[0], pixels(reference)[0])
        assert runtime.jobs.find(job_id).worker != first_worker
    else:
        assert outcome["status"] == 503, outcome
        assert "replica" in outcome["body"]["detail"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda seed: txt2img(client, prompt="a green triangle",
                                                     seed=seed, steps=4, width=64, height=64),
                                range(8)))
    assert all(len(answer["images"]) == 1 for answer in answers)


def test_progress_and_interrupt_by_id_task(cluster):
    runtime, client, _ = cluster
    wait_for_replicas(client, runtime)  # one job each, at the same time
    long_id, other_id = f"long-{time.time_ns()}", f"other-{time.time_ns()}"
    long_thread, long_outcome = start_in_background(client, {
        "prompt": "a red circle", "seed": 1, "steps": 900, "width": 64, "height": 64,
        "force_task_id": long_id})
    other_thread, other_outcome = start_in_background(client, {
        "prompt": "a blue square", "seed": 2, "steps": 300, "width": 64, "height": 64,
        "force_task_id": other_id})
    try:
        check_progress_and_interrupt(runtime, client, long_id, other_id)
    except BaseException:
        for job_id in (long_id, other_id):  # nothing keeps running when a check failed
            client.post("/sdapi/v1/interrupt", json={"id_task": job_id}, headers=AUTH)
        raise
    finally:
        long_thread.join(60)
        other_thread.join(120)
    assert long_outcome["status"] == 200 and other_outcome["status"] == 200
    long_job, other_job = runtime.jobs.find(long_id), runtime.jobs.find(other_id)
    assert long_job.progress.step < 900 - 1, "the interrupted job ran to its end"
    assert other_job.progress.step >= 300 - 1, "the other job must not have been stopped"


def check_progress_and_interrupt(runtime, client, long_id: str, other_id: str) -> None:
    wait_until_running(runtime, long_id)
    wait_until_running(runtime, other_id)
    for job_id, steps in ((long_id, 900), (other_id, 300)):
        # The replica's first progress report (and its first finished step) may trail
        # the job's start by a moment.
        deadline = time.monotonic() + 20
        while True:
            progress = client.get("/sdapi/v1/progress", params={"id_task": job_id},
                                  headers=AUTH).json()
            reported = progress["state"]["job"] == job_id and progress["progress"] > 0
            if reported or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert progress["state"]["job"] == job_id
        assert progress["state"]["sampling_steps"] == steps
        assert 0 < progress["progress"] < 1
        internal = client.post("/internal/progress", json={"id_task": job_id},
                               headers=AUTH).json()
        assert internal["active"] and not internal["queued"]
    stopped = client.post("/sdapi/v1/interrupt", json={"id_task": long_id}, headers=AUTH)
    assert stopped.status_code == 200
    assert runtime.jobs.find(long_id).finished_within(30), "the interrupt did not stop it"
    assert not runtime.jobs.find(other_id).done, "the other job should still be running"


def test_a_checkpoint_that_cannot_load_is_the_usual_error_and_the_replica_stays(cluster):
    _, client, _ = cluster
    response = client.post("/sdapi/v1/txt2img", headers=AUTH, json={
        "prompt": "x", "steps": 2, "width": 64, "height": 64,
        "override_settings": {"sd_model_checkpoint": "broken.safetensors"}})
    assert response.status_code == 422, response.text
    assert "broken.safetensors" in response.json()["detail"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda seed: txt2img(client, prompt="a star", seed=seed,
                                                     steps=3, width=64, height=64), range(4)))
    assert all(answer["images"] for answer in answers)


def test_pictures_are_saved_once_by_the_ingress(cluster):
    runtime, client, _ = cluster
    before = set(runtime.paths.data_dir.rglob("*.png"))
    answer = txt2img(client, prompt="a green triangle", seed=5, steps=3, width=64, height=64,
                     batch_size=2, save_images=True)
    written = sorted(set(runtime.paths.data_dir.rglob("*.png")) - before)
    grids = [path for path in written if "txt2img-grids" in str(path)]
    assert len(written) == 3 and len(grids) == 1, written  # the two pictures and their grid
    pictures = [path for path in written if "txt2img-images" in str(path)]
    saved = [Image.open(path) for path in pictures]
    assert [image.info["parameters"] for image in saved] == infotexts(answer)[-2:]
    assert Image.open(grids[0]).info["parameters"] == infotexts(answer)[-2]


def test_every_ingress_route_needs_credentials(cluster):
    """The ingress with its web UI (the API beside it, as `--api`): every route, 401."""
    from webui.app import create_app

    runtime, client, _ = cluster
    app = create_app(runtime)
    with TestClient(app) as anonymous:
        assert walk_unauthenticated(anonymous, app, public_allowed=False) == []
        assert anonymous.get("/", headers=AUTH).status_code == 200  # the UI, logged in


def test_unload_and_reload_are_refused_clearly(cluster):
    _, client, _ = cluster
    for route in ("/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint"):
        response = client.post(route, headers=AUTH)
        assert response.status_code == 501
        assert "cluster mode" in response.json()["detail"]


def test_without_the_flag_ray_is_never_imported(tmp_path):
    import subprocess

    script = ("import sys; from modules.app.cmd_args import parse_args; "
              "from modules.app.cli import build_app, start_cluster; "
              "from modules.runtime import Runtime; "
              f"rt = Runtime.create(parse_args(['--data-dir', {str(tmp_path)!r}, '--nowebui']));"
              "assert start_cluster(rt) is None; build_app(rt, None); "
              "assert 'ray' not in sys.modules, 'ray was imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr
