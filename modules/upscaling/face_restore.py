"""Restoring the faces of a picture: detect, align, run the network, paste back.

Runs wherever spandrel runs (in the app, or in the upscaler worker, `worker.py`), on a
`face_models.FaceModel`. Each face found by `face_detect.py` (or RetinaFace,
`face_retinaface.py`) is warped into the FFHQ 512x512 crop (`face_align.py`), restored,
and blended back through a feathered mask (or ParseNet's face mask, `face_parsenet.py`);
faces are handled largest first, each on the result of the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modules.upscaling.face_align import align_matrix, paste_face, warp_crop
from modules.upscaling.face_detect import Detector, Face, detect_faces


@dataclass
class RestoredFace:
    """One face: where it was found, its aligned crop, the restored crop, and the
    box of the picture the paste-back may have changed (x0, y0, x1, y1)."""

    face: Face
    matrix: np.ndarray
    crop: np.ndarray
    restored: np.ndarray
    box: tuple[int, int, int, int]


def restore_faces(image: np.ndarray, model, weight: float, detect: Detector = detect_faces,
                  parse=None) -> tuple[np.ndarray, list[RestoredFace]]:
    """`image` (RGB uint8) with every face `detect` finds (OpenCV's cascades unless
    `face_detect.detector_for` chose RetinaFace) restored by `model`; pasted back through
    `parse`'s mask of the restored crop (facexlib's ParseNet, `face_parsenet.FaceParser`)
    when given, else the feathered square."""
    out = np.ascontiguousarray(image)
    done = []
    for face in detect(out):
        matrix = align_matrix(face.landmarks)
        crop = warp_crop(out, matrix)
        restored = model.restore(crop, weight)
        mask = None if parse is None else parse(restored)
        out, box = paste_face(out, restored, matrix, mask)
        done.append(RestoredFace(face=face, matrix=matrix, crop=crop, restored=restored,
                                 box=box))
    return out, done
