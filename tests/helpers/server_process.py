"""Run `launch.py` as a real server process on a free loopback port, as a user would."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from modules.app.early_page import STARTING_HEADER

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / "models" / "Stable-diffusion"
# A proxy that refuses every connection: the share tunnel fails at once, as offline.
NO_INTERNET = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "NO_PROXY": "127.0.0.1,localhost"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def launch_command(*flags: str, python: str = sys.executable) -> list[str]:
    return [python, str(ROOT / "launch.py"), "--skip-install", *flags]


@contextlib.contextmanager
def running_server(data_dir: Path, *flags: str, port: int | None = None,
                   env: dict[str, str] | None = None,
                   timeout: float = 300) -> Iterator[ServerProcess]:
    """Start `launch.py` with `flags` and yield once `/` answers; stop it afterwards."""
    port = port or free_port()
    log_path = data_dir / "server.log"
    command = launch_command("--port", str(port), "--data-dir", str(data_dir), *flags)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **NO_INTERNET, **(env or {})})
    server = ServerProcess(process=process, url=f"http://127.0.0.1:{port}", log_path=log_path)
    try:
        wait_until_answering(server, timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_answering(server: ServerProcess, timeout: float, path: str = "/") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            answer = httpx.get(server.url + path, timeout=5)
            if STARTING_HEADER not in answer.headers:  # the app, not the start-up page
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server did not answer within {timeout} s:\n{server.log()}")
