"""Seconds from `python launch.py --skip-install` to the page being served, and to the
first demo image over the API, against the floor any Gradio app pays in the same run.

Rows (medians over --repeats runs, each a fresh process, runs interleaved so that load
from other processes on a shared machine hits every row alike):

- reference: a fresh interpreter importing torch, gradio and fastapi, the floor of any
  torch + Gradio app (Easel's own start-up is the rest);
- floor of any Gradio page: a fresh interpreter importing gradio alone (no Gradio page
  can be served sooner than this);
- start-up page served (`GET /` answers with `modules.app.early_page`'s placeholder, bound
  before torch and gradio load);
- Easel UI page served (`GET /` answers 200 from the Gradio app) with `--api`;
- first 64x64 demo image (4 steps) returned by `POST /sdapi/v1/txt2img`, from launch
  (the model loads in the background while the page is already served);
- API only (`--nowebui`): `GET /sdapi/v1/samplers` answers.

Run: `.venv/bin/python bench/bench_startup.py [--repeats N]`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.extras import require_test_extras  # noqa: E402

require_test_extras(__file__, "httpx")
import httpx  # noqa: E402

from modules.app.early_page import STARTING_HEADER  # noqa: E402
from tests.helpers.server_process import (  # noqa: E402
    DEMO_DIR,
    NO_INTERNET,
    ROOT,
    free_port,
    launch_command,
)

TXT2IMG = {"prompt": "a red circle", "steps": 4, "width": 64, "height": 64, "seed": 1}
POLL_S = 0.05


def time_reference_imports(modules: str = "torch, gradio, fastapi") -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {modules}"], check=True, cwd=ROOT)
    return time.perf_counter() - started


def wait_for(url: str, process: subprocess.Popen, started: float, *, placeholder_ok: bool) -> float:
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            answer = httpx.get(url, timeout=5)
            if answer.status_code < 500 and (placeholder_ok
                                             or STARTING_HEADER not in answer.headers):
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(POLL_S)


def time_launch(*flags: str, probe: str, generate: bool) -> tuple[float, float, float | None]:
    """(seconds until anything answers `probe`, until the app does, until the first image)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        command = launch_command("--port", str(port), "--data-dir", data,
                                 "--ckpt-dir", str(DEMO_DIR), *flags)
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env={**os.environ, **NO_INTERNET})
        try:
            base = f"http://127.0.0.1:{port}"
            first = wait_for(base + probe, process, started, placeholder_ok=True)
            served = wait_for(base + probe, process, started, placeholder_ok=False)
            image = None
            if generate:
                answer = httpx.post(base + "/sdapi/v1/txt2img", json=TXT2IMG, timeout=600)
                answer.raise_for_status()
                image = time.perf_counter() - started
            return first, served, image
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {"reference: import torch, gradio, fastapi": [],
                                    "floor of a Gradio page: import gradio": [],
                                    "start-up page served": [],
                                    "Easel UI page served": [],
                                    "first demo image via API (from launch)": [],
                                    "API only (--nowebui) answering": []}
    for _ in range(args.repeats):
        rows["reference: import torch, gradio, fastapi"].append(time_reference_imports())
        rows["floor of a Gradio page: import gradio"].append(time_reference_imports("gradio"))
        early, page, image = time_launch("--api", probe="/", generate=True)
        rows["start-up page served"].append(early)
        rows["Easel UI page served"].append(page)
        rows["first demo image via API (from launch)"].append(image)
        _, api, _ = time_launch("--nowebui", probe="/sdapi/v1/samplers", generate=False)
        rows["API only (--nowebui) answering"].append(api)
    reference = statistics.median(rows["reference: import torch, gradio, fastapi"])
    print(f"{'':44} {'median s':>9} {'min s':>7} {'x ref':>6}")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"{name:44} {median:9.2f} {min(values):7.2f} {median / reference:6.2f}")


if __name__ == "__main__":
    main()
