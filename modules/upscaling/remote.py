"""The app's side of the spandrel worker (`worker.py`) in the separate upscaler environment.

`SpandrelWorker` starts the worker on first use, with the upscaler environment's
interpreter and the project on its path, and talks to it over pipes: pictures go as
raw RGB bytes, so a model pass costs a copy of the picture each way. One request at a
time (a lock); the worker's stderr is kept (the last lines) to explain a failure. A
worker that died is started again on the next request. Closing the pipe ends it.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from modules.upscaling.worker import read_message, write_message

ROOT = Path(__file__).resolve().parent.parent.parent
STDERR_LINES = 40
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


class WorkerError(RuntimeError):
    """The worker could not answer (not started, died, or refused the request)."""


class SpandrelWorker:
    """A lazily started worker process running spandrel models on `device`."""

    def __init__(self, *, python: Path, device: str = "cpu") -> None:
        self.python = Path(python)
        self.device = device
        self._process: subprocess.Popen | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._lock = threading.Lock()

    def request(self, header: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        """Send one request; the answer, or WorkerError with the worker's reason.

        Requests are idempotent (a `run` loads its file if needed), so when the worker
        turns out to have died, a fresh one gets the request once more.
        """
        with self._lock:
            answer = self._exchange(header, payload) or self._exchange(header, payload)
            if answer is None:
                raise WorkerError(f"the upscaler worker ({self.python}) stopped: "
                                  f"{self.stderr_tail()}")
        if not answer[0].get("ok"):
            raise WorkerError(answer[0].get("error", "no reason given"))
        return answer

    def _exchange(self, header: dict, payload: bytes) -> tuple[dict, bytes] | None:
        process = self._running()
        try:
            write_message(process.stdin, header, payload)
            answer = read_message(process.stdout)
        except (OSError, ValueError, EOFError) as error:
            answer = None
            self._stderr.append(f"{type(error).__name__}: {error}")
        if answer is None:
            self._stop()
        return answer

    @property
    def pid(self) -> int | None:
        """The worker's process id while it runs."""
        running = self._process is not None and self._process.poll() is None
        return self._process.pid if running else None

    def stderr_tail(self) -> str:
        return " | ".join(self._stderr) or "no output"

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _running(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is None:
            return self._process
        if not self.python.exists():
            raise WorkerError(f"no upscaler environment at {self.python}")
        env = dict(os.environ, PYTHONPATH=str(ROOT), **OFFLINE_ENV)
        env.pop("VIRTUAL_ENV", None)
        self._process = subprocess.Popen(
            [str(self.python), "-m", "modules.upscaling.worker", "--device", self.device],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        threading.Thread(target=self._drain, args=(self._process,), daemon=True).start()
        return self._process

    def _drain(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            self._stderr.append(line.decode(errors="replace").rstrip())

    def _stop(self) -> None:
        if self._process is None:
            return
        for stream in (self._process.stdin, self._process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


@dataclass
class RemoteModel:
    """A model loaded in the worker; `apply` matches `UpscaleModel.apply`."""

    worker: SpandrelWorker
    path: Path
    scale: int
    arch: str

    @staticmethod
    def load(worker: SpandrelWorker, path: Path) -> "RemoteModel":
        header, _ = worker.request({"op": "load", "path": str(path)})
        return RemoteModel(worker=worker, path=path, scale=int(header["scale"]),
                           arch=str(header["arch"]))

    def apply(self, image: Image.Image, *, tile: int, overlap: int) -> Image.Image:
        image = image.convert("RGB")
        header, payload = self.worker.request(
            {"op": "run", "path": str(self.path), "width": image.width,
             "height": image.height, "tile": tile, "overlap": overlap}, image.tobytes())
        return Image.frombytes("RGB", (header["width"], header["height"]), payload)

    def release(self) -> None:
        """Free the worker's copy (the registry evicted this model)."""
        try:
            self.worker.request({"op": "unload", "path": str(self.path)})
        except WorkerError:
            pass  # a stopped worker holds nothing


def restore_faces_remote(worker: SpandrelWorker, path: Path, image: Image.Image,
                         weight: float, detector: Path | None = None,
                         parser: Path | None = None) -> tuple[Image.Image, list[list[int]]]:
    """`image` with its faces restored by the face model at `path`, in the worker
    (`worker.py`'s "faces" op); also the boxes the paste-back changed. `detector`: the
    RetinaFace file to find faces with (None: OpenCV's cascades); `parser`: the ParseNet
    file whose mask pastes the faces back (None: the feathered square)."""
    image = image.convert("RGB")
    request = {"op": "faces", "path": str(path), "weight": float(weight),
               "width": image.width, "height": image.height}
    for key, file in (("detector", detector), ("parser", parser)):
        if file is not None:
            request[key] = str(file)
    header, payload = worker.request(request, image.tobytes())
    restored = Image.frombytes("RGB", (header["width"], header["height"]), payload)
    return restored, list(header.get("boxes", []))
