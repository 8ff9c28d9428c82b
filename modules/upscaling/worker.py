"""The spandrel worker: runs upscaler models in the separate upscaler environment.

    <upscaler env>/bin/python -m modules.upscaling.worker --device cpu
    <upscaler env>\\Scripts\\python.exe -m modules.upscaling.worker --device cpu  (Windows)

When the app's torch has no working torchvision (our CPU torch 2.13 build), spandrel
cannot be imported in the app. The bootstrap then builds `.venv-upscalers/` with a
torch + torchvision pair that works, and the app starts this process there
(`remote.py`). It reads files with the same safe readers and runs them through the
same `UpscaleModel.apply` (tiles with overlap) as the app would in-process.

Protocol (`remote.py` is the other end): each message is one JSON line, followed by
`payload` bytes of raw RGB pixels when the header says so. Requests:
`{"op": "load", "path"}` -> `{"ok", "scale", "arch"}`;
`{"op": "run", "path", "width", "height", "tile", "overlap", "payload"}` + pixels ->
`{"ok", "width", "height", "payload"}` + pixels; `{"op": "unload", "path"}`;
`{"op": "faces", "path", "weight", "width", "height", "payload"}` + pixels -> the
picture with its faces restored by the face model at `path` (`face_restore.py`), with
`"boxes"`: the regions the paste-back changed; with `"detector"` (the path of facexlib's
RetinaFace file) faces are found by RetinaFace, else by OpenCV's cascades; with
`"parser"` (facexlib's ParseNet file) its face mask replaces the feathered square.
A failure answers `{"ok": false, "error": "..."}` and the worker keeps serving. The
worker exits when its stdin closes (the app ended); it needs no signal, so the app
stops it the same way on Windows and POSIX (closing the pipe, else `Popen.kill`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import BinaryIO

import torch
from PIL import Image

from modules.upscaling.face_models import FaceModel, FaceModelError, load_face_model
from modules.upscaling.face_parsenet import ParseNetError
from modules.upscaling.face_retinaface import RetinaFaceError
from modules.upscaling.files import load_weights
from modules.upscaling.network import UpscaleModel
from modules.upscaling.spandrel_models import SpandrelError, load_spandrel


def read_message(stream: BinaryIO) -> tuple[dict, bytes] | None:
    """One JSON header line and its payload; None at end of stream."""
    line = stream.readline()
    if not line:
        return None
    header = json.loads(line)
    size = int(header.get("payload", 0))
    payload = stream.read(size) if size else b""
    if len(payload) != size:
        raise EOFError(f"payload cut short: {len(payload)} of {size} bytes")
    return header, payload


def write_message(stream: BinaryIO, header: dict, payload: bytes = b"") -> None:
    stream.write(json.dumps({**header, "payload": len(payload)}).encode() + b"\n")
    stream.write(payload)
    stream.flush()


class Worker:
    """Loaded models by path; reloaded when the file's mtime or size changes."""

    def __init__(self, *, device: torch.device) -> None:
        self.device = device
        self.models: dict[str, tuple[tuple, UpscaleModel]] = {}
        self.face_models: dict[str, tuple[tuple, FaceModel]] = {}
        self.facexlib: dict[str, tuple[tuple, object]] = {}  # detector, parser by path

    def model(self, path: str) -> UpscaleModel:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self.models.get(path)
        if cached is None or cached[0] != stamp:
            file = Path(path)
            self.models[path] = (stamp, load_spandrel(load_weights(file), file, self.device))
        return self.models[path][1]

    def face_model(self, path: str) -> FaceModel:
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self.face_models.get(path)
        if cached is None or cached[0] != stamp:
            file = Path(path)
            self.face_models.clear()  # one face model at a time: they are large
            self.face_models[path] = (stamp, load_face_model(load_weights(file), file,
                                                             self.device))
        return self.face_models[path][1]

    def detector(self, path: str | None):
        """RetinaFace from `path` (kept while the file is unchanged), else OpenCV's."""
        from modules.upscaling.face_detect import detect_faces, detector_for

        return self._facexlib(path, detector_for) if path else detect_faces

    def parser(self, path: str | None):
        """ParseNet's mask maker from `path`, else None (the feathered square)."""
        from modules.upscaling.face_detect import parser_for

        return self._facexlib(path, parser_for) if path else None

    def _facexlib(self, path: str, build):
        stat = os.stat(path)
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self.facexlib.get(path)
        if cached is None or cached[0] != stamp:
            self.facexlib[path] = (stamp, build(Path(path), self.device))
        return self.facexlib[path][1]

    def faces(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        import numpy as np

        from modules.upscaling.face_restore import restore_faces

        size = (int(header["width"]), int(header["height"]))
        image = np.asarray(Image.frombytes("RGB", size, payload))
        out, done = restore_faces(image, self.face_model(header["path"]),
                                  float(header.get("weight", 0.5)),
                                  self.detector(header.get("detector")),
                                  self.parser(header.get("parser")))
        return {"ok": True, "width": size[0], "height": size[1],
                "boxes": [[int(v) for v in face.box] for face in done]}, out.tobytes()

    def handle(self, header: dict, payload: bytes) -> tuple[dict, bytes]:
        op, path = header.get("op"), header.get("path", "")
        if op == "load":
            model = self.model(path)
            return {"ok": True, "scale": model.scale, "arch": model.arch}, b""
        if op == "run":
            size = (int(header["width"]), int(header["height"]))
            image = Image.frombytes("RGB", size, payload)
            out = self.model(path).apply(image, tile=int(header["tile"]),
                                         overlap=int(header["overlap"]))
            return {"ok": True, "width": out.width, "height": out.height}, out.tobytes()
        if op == "faces":
            return self.faces(header, payload)
        if op == "unload":
            self.models.pop(path, None)
            self.face_models.pop(path, None)
            return {"ok": True}, b""
        return {"ok": False, "error": f"unknown op {op!r}"}, b""


def serve(requests: BinaryIO, answers: BinaryIO, worker: Worker) -> None:
    while (message := read_message(requests)) is not None:
        try:
            header, payload = worker.handle(*message)
        except (SpandrelError, FaceModelError, RetinaFaceError, ParseNetError) as error:
            # Their messages name the file.
            header, payload = {"ok": False, "error": str(error)}, b""
        except Exception as error:  # reported to the app, which names the file
            header, payload = {"ok": False, "error": f"{type(error).__name__}: {error}"}, b""
        write_message(answers, header, payload)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    # The protocol owns the real stdout; anything a library prints goes to stderr.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    with torch.inference_mode():
        serve(sys.stdin.buffer, answers, Worker(device=torch.device(args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
