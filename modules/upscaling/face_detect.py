"""Finding faces to restore: OpenCV's Haar cascades, which ship inside the
`opencv-python-headless` wheel (`cv2.data.haarcascades`), so no model download.

A face is a box from the frontal-face cascade plus two landmarks, the eyes, which
`face_align.py` maps onto the FFHQ template. The eyes come from the eye cascade run
in the upper half of the box when it finds one eye in each half (at about the same
height and a plausible distance apart); otherwise they are estimated from the box at
the places the frontal-face cascade puts them (`EYE_Y`, `EYE_X`): box-based cropping.

When the user has facexlib's RetinaFace file (`models/facexlib/detection_Resnet50_Final.pth`,
A1111's detector) `detector_for` picks it instead (`face_retinaface.py`: boxes and five
landmarks); the Haar cascades are the fallback. facexlib's parsing file beside it
(`parsing_parsenet.pth`) gives the paste-back mask (`parser_for`, `face_parsenet.py`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Where the eyes sit inside a box of haarcascade_frontalface_default (fractions of
# the box's width and height), for faces whose eyes the eye cascade misses.
EYE_Y = 0.38
EYE_X = (0.31, 0.69)


@dataclass(frozen=True)
class Face:
    """A detected face: its box (x, y, w, h) and its eyes (left, right as seen)."""

    box: tuple[int, int, int, int]
    landmarks: np.ndarray  # (2, 2): the first two points of the FFHQ template
    estimated: bool  # eyes estimated from the box (no eye cascade match)


@functools.cache
def _cascade(name: str):
    import cv2

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if cascade.empty():
        raise RuntimeError(f"OpenCV's {name} could not be loaded")
    return cascade


def detect_faces(image: np.ndarray) -> list[Face]:
    """Faces in an RGB uint8 picture, largest first."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    smallest = max(24, min(gray.shape) // 16)
    boxes = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        gray, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest))
    faces = [_face(gray, tuple(int(v) for v in box)) for box in boxes]
    return sorted(faces, key=lambda face: -face.box[2] * face.box[3])


def _face(gray: np.ndarray, box: tuple[int, int, int, int]) -> Face:
    eyes = _eyes(gray, box)
    if eyes is not None:
        return Face(box=box, landmarks=eyes, estimated=False)
    x, y, w, h = box
    estimate = np.array([[x + EYE_X[0] * w, y + EYE_Y * h], [x + EYE_X[1] * w, y + EYE_Y * h]])
    return Face(box=box, landmarks=estimate, estimated=True)


def _eyes(gray: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """The eye centres when the eye cascade finds a plausible pair in the upper half."""
    x, y, w, h = box
    upper = gray[y:y + h // 2 + h // 10, x:x + w]
    found = _cascade("haarcascade_eye.xml").detectMultiScale(
        upper, scaleFactor=1.1, minNeighbors=5, minSize=(max(8, w // 10),) * 2)
    centres = [(x + ex + ew / 2, y + ey + eh / 2, ew * eh) for ex, ey, ew, eh in found]
    left = [c for c in centres if c[0] < x + w / 2]
    right = [c for c in centres if c[0] >= x + w / 2]
    pairs = [(a, b) for a in left for b in right
             if abs(a[1] - b[1]) < 0.15 * w and 0.25 * w < b[0] - a[0] < 0.7 * w]
    if not pairs:
        return None
    a, b = max(pairs, key=lambda pair: pair[0][2] + pair[1][2])  # the largest pair
    return np.array([[a[0], a[1]], [b[0], b[1]]], dtype=np.float64)


Detector = Callable[[np.ndarray], list[Face]]


def retinaface_file(folder: Path | None) -> Path | None:
    """facexlib's RetinaFace file in `folder` (models/facexlib/), when it is there."""
    from modules.upscaling.face_retinaface import FILE_NAME

    return _file_in(folder, FILE_NAME)


def parsenet_file(folder: Path | None) -> Path | None:
    """facexlib's ParseNet file in `folder` (models/facexlib/), when it is there."""
    from modules.upscaling.face_parsenet import FILE_NAME

    return _file_in(folder, FILE_NAME)


def _file_in(folder: Path | None, name: str) -> Path | None:
    if folder is None:
        return None
    path = Path(folder) / name
    return path if path.is_file() else None


def parser_for(parsenet: Path | None, device="cpu"):
    """The paste-back mask maker from the ParseNet file at `parsenet` (a ParseNetError
    naming it when it cannot be used); None without a file (the feathered square)."""
    if parsenet is None:
        return None
    from modules.upscaling.face_parsenet import FaceParser, load_parsenet

    return FaceParser(load_parsenet(Path(parsenet), device))


def detector_for(retinaface: Path | None, device="cpu") -> Detector:
    """RetinaFace from the file at `retinaface` when given (a RetinaFaceError naming it
    when it cannot be used), otherwise OpenCV's cascades (`detect_faces`)."""
    if retinaface is None:
        return detect_faces
    from modules.upscaling.face_retinaface import RetinaFaceDetector, load_retinaface

    return RetinaFaceDetector(load_retinaface(Path(retinaface), device))
