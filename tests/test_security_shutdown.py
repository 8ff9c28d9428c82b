"""SIGTERM stops a server that is in the middle of a long job within seconds.

The server runs as a user starts it (`launch.py --nowebui`, a tiny checkpoint); a client
waits on a txt2img job that would run for many minutes. On SIGTERM the server stops
accepting, stops the job inside its current step and exits (docs/security.md,
"Bounded work per request").
"""

from __future__ import annotations

import signal
import threading
import time

import httpx

from tests.helpers.checkpoints import write_tiny_checkpoint
from tests.helpers.server_process import running_server
from tests.tiny import TINY_SD15

EXIT_WITHIN_S = 10
# ~16 s per step on the development machine: far longer than the allowed exit time.
LONG_JOB = {"prompt": "x", "width": 1024, "height": 1024, "steps": 100, "n_iter": 4}


def test_sigterm_stops_a_long_job_and_exits_within_seconds(tmp_path):
    write_tiny_checkpoint(tmp_path / "models" / "Stable-diffusion" / "alpha.safetensors",
                          TINY_SD15)
    with running_server(tmp_path, "--nowebui") as server:
        answers: list = []

        def generate() -> None:
            try:
                answers.append(httpx.post(server.url + "/sdapi/v1/txt2img", json=LONG_JOB,
                                          timeout=120))
            except httpx.TransportError as error:
                answers.append(error)

        client = threading.Thread(target=generate, daemon=True)
        client.start()
        deadline = time.monotonic() + 120
        while not httpx.get(server.url + "/sdapi/v1/progress", timeout=10).json()["state"]:
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        time.sleep(2)  # inside the model load or the first (long) step
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        elapsed = time.monotonic() - stopped
        client.join(10)
    assert elapsed < EXIT_WITHIN_S, f"exit took {elapsed:.1f} s\n{server.log()[-2000:]}"
    assert answers, "the waiting client got neither an answer nor a closed connection"
