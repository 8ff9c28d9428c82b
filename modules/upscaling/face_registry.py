"""The face restorers the user has installed, and running one over a picture.

Files and names follow A1111: `models/GFPGAN/` holds GFPGAN (`GFPGANv1.4.pth`, or 1.3,
or any `GFPGAN*` file) and here also RestoreFormer (`RestoreFormer.pth`) and
RestoreFormer++ (`RestoreFormerPlusPlus.pth`), which A1111's core does not have;
`models/Codeformer/` holds CodeFormer (`codeformer-v0.1.0.pth`, or `codeformer.pth`).
`--gfpgan-models-path` / `--codeformer-models-path` replace those folders. Nothing is
ever downloaded: a restorer whose file is missing is an error naming the folder and
the file expected. Files are read by the safe readers (`files.load_weights`).
Faces are found by facexlib's RetinaFace when `models/facexlib/detection_Resnet50_Final.pth`
is there (A1111's detector), else by OpenCV's cascades (`face_detect.detector_for`), and
pasted back through facexlib's ParseNet mask when `parsing_parsenet.pth` is there too.

The network runs where spandrel runs, as for upscalers (`registry.py`): in this
process when spandrel imports here, otherwise the whole restoration (detection,
alignment, network, paste-back: `face_restore.py`) runs in the upscaler worker, one
request per picture.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from modules.models.errors import ModelLoadError
from modules.models.folders import walk_files
from modules.upscaling.face_detect import (
    detect_faces,
    detector_for,
    parsenet_file,
    parser_for,
    retinaface_file,
)
from modules.upscaling.files import MODEL_SUFFIXES, load_weights
from modules.upscaling.registry import UpscalerError, UpscalerRegistry, upscalers_of
from modules.upscaling.remote import WorkerError, restore_faces_remote


class FaceRestoreError(UpscalerError):
    """A restorer that is unknown, not installed, or whose file cannot be used (a 422)."""


def _key(stem: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", stem.lower()).replace("++", "plusplus")


@dataclass(frozen=True)
class Restorer:
    """One kind of face restorer: its name, folder, expected file and which files fit."""

    name: str
    folder: str  # A1111's folder under models/
    expected: str  # the file named in "missing" messages
    preferred: tuple[str, ...]  # stems tried first, in order
    fits: Callable[[str], bool]


RESTORERS = (
    Restorer("CodeFormer", "Codeformer", "codeformer-v0.1.0.pth",
             ("codeformer-v0.1.0", "codeformer"), lambda k: "codeformer" in k),
    Restorer("GFPGAN", "GFPGAN", "GFPGANv1.4.pth", ("GFPGANv1.4", "GFPGANv1.3"),
             lambda k: k.startswith("gfpgan")),
    Restorer("RestoreFormer", "GFPGAN", "RestoreFormer.pth", ("RestoreFormer",),
             lambda k: k.startswith("restoreformer") and "plusplus" not in k),
    Restorer("RestoreFormer++", "GFPGAN", "RestoreFormerPlusPlus.pth",
             ("RestoreFormerPlusPlus",), lambda k: k.startswith("restoreformerplusplus")),
)
ARGS = {"GFPGAN": "gfpgan_models_path", "Codeformer": "codeformer_models_path"}


@dataclass(frozen=True)
class FaceRestorerInfo:
    """One entry of `/sdapi/v1/face-restorers` (`cmd_dir`: the folder of its file)."""

    name: str
    cmd_dir: str
    path: str


class FaceRestorers:
    """Face restorers over `folders` ({"GFPGAN": path, "Codeformer": path}, and
    optionally "facexlib": the folder of facexlib's detector and parsing files)."""

    def __init__(self, *, folders: dict[str, Path], upscalers: UpscalerRegistry) -> None:
        self.folders = {key: Path(value) for key, value in folders.items()}
        self.upscalers = upscalers
        self._local: tuple[tuple, object] | None = None  # the in-process model, if any
        self._facexlib: dict[str, tuple[tuple, object]] = {}  # in-process, by path
        self._lock = threading.Lock()

    def _file(self, restorer: Restorer) -> Path | None:
        files = [p for p in walk_files(self.folders[restorer.folder], MODEL_SUFFIXES)
                 if restorer.fits(_key(p.stem))]
        for stem in restorer.preferred:
            found = next((p for p in files if p.stem.lower() == stem.lower()), None)
            if found is not None:
                return found
        return max(files, key=lambda p: p.stem.lower(), default=None)  # the newest version

    def list(self) -> list[FaceRestorerInfo]:
        """The installed restorers, in A1111's order (CodeFormer, GFPGAN, ...)."""
        found = ((r, self._file(r)) for r in RESTORERS)
        return [FaceRestorerInfo(name=r.name, cmd_dir=str(p.parent), path=str(p))
                for r, p in found if p is not None]

    def path_for(self, name: str) -> Path:
        """The file of restorer `name`; a FaceRestoreError when unknown or missing."""
        restorer = next((r for r in RESTORERS if r.name.lower() == str(name).lower()), None)
        if restorer is None:
            raise FaceRestoreError(f"unknown face restorer {name!r}; known: "
                                   f"{', '.join(r.name for r in RESTORERS)}")
        path = self._file(restorer)
        if path is None:
            folder = self.folders[restorer.folder]
            raise FaceRestoreError(
                f"{restorer.name} is not installed: put {restorer.expected} into the "
                f"models/{folder.name}/ folder ({folder}); nothing is downloaded")
        return path

    def restore(self, image: Image.Image, name: str, weight: float = 0.5) -> Image.Image:
        """`image` with every face restored by `name` (CodeFormer fidelity `weight`)."""
        path = self.path_for(name)
        image = image.convert("RGB")
        access = self.upscalers.spandrel()
        detector = retinaface_file(self.folders.get("facexlib"))
        parser = parsenet_file(self.folders.get("facexlib"))
        if access.in_process:
            from modules.upscaling.face_restore import restore_faces

            out, _ = restore_faces(np.asarray(image), self._model(path), weight,
                                   self._detect(detector), self._parser(parser))
            return Image.fromarray(out)
        if access.worker is None:
            raise FaceRestoreError(f"{name}: face restoration needs spandrel: "
                                   f"{access.unavailable()}")
        try:
            return restore_faces_remote(access.worker, path, image, weight, detector,
                                        parser)[0]
        except WorkerError as error:
            raise FaceRestoreError(f"{name} ({path.name}): {error}") from error

    def apply(self, image: Image.Image, name: str, *, weight: float = 0.5,
              visibility: float = 1.0) -> Image.Image:
        """A1111's visibility: the restored picture blended over the original."""
        restored = self.restore(image, name, weight)
        if visibility >= 1:
            return restored
        return Image.blend(image.convert("RGB"), restored, visibility)

    def _detect(self, detector: Path | None):
        """The in-process face detector: RetinaFace from `detector`, else OpenCV's."""
        if detector is None:
            return detect_faces
        return self._facexlib_file(detector, detector_for)

    def _parser(self, parser: Path | None):
        """The in-process ParseNet mask maker from `parser`, else None."""
        return None if parser is None else self._facexlib_file(parser, parser_for)

    def _facexlib_file(self, path: Path, build):
        """`build(path, device)`, kept while the file is unchanged; its errors (which
        name the file) as FaceRestoreErrors."""
        from modules.upscaling.face_parsenet import ParseNetError
        from modules.upscaling.face_retinaface import RetinaFaceError

        with self._lock:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._facexlib.get(str(path))
            if cached is None or cached[0] != stamp:
                try:
                    self._facexlib[str(path)] = (stamp, build(path, self.upscalers.device))
                except (RetinaFaceError, ParseNetError) as error:
                    raise FaceRestoreError(str(error)) from error
            return self._facexlib[str(path)][1]

    def _model(self, path: Path):
        from modules.upscaling.face_models import FaceModelError, load_face_model

        with self._lock:
            stat = path.stat()
            stamp = (str(path), stat.st_mtime_ns, stat.st_size)
            if self._local is None or self._local[0] != stamp:
                self._local = None  # free the old one before loading the next
                try:
                    model = load_face_model(load_weights(path), path, self.upscalers.device)
                except (ModelLoadError, OSError) as error:
                    raise FaceRestoreError(f"{path.name}: cannot read the file ({error})"
                                           ) from error
                except FaceModelError as error:
                    raise FaceRestoreError(str(error)) from error
                self._local = (stamp, model)
            return self._local[1]


def face_folders(runtime) -> dict[str, Path]:
    """A1111's folders under the models folder, or the command-line replacements."""
    args = getattr(runtime, "args", None)
    folders = {}
    for folder, flag in ARGS.items():
        given = getattr(args, flag, None) if args is not None else None
        folders[folder] = Path(given) if given else runtime.paths.models_dir / folder
    folders["facexlib"] = getattr(runtime.paths, "facexlib_dir", None) or (
        runtime.paths.models_dir / "facexlib")
    return folders


def face_restorers_of(runtime) -> FaceRestorers:
    """The runtime's restorers (kept on it so a loaded model serves every job), sharing
    the upscalers' spandrel access (and worker)."""
    existing = getattr(runtime, "face_restorers", None)
    if isinstance(existing, FaceRestorers):
        return existing
    restorers = FaceRestorers(folders=face_folders(runtime), upscalers=upscalers_of(runtime))
    try:
        runtime.face_restorers = restorers
    except AttributeError:  # a frozen or slotted test runtime: not kept
        pass
    return restorers
