"""Face restoration fixtures, built in the interpreter that runs spandrel and OpenCV.

    <upscaler python> tests/helpers/face_restore_files.py OUT_DIR

Writes, with random weights in the real key layouts (spandrel's own architecture
classes): `GFPGAN/GFPGANv1.4.pth` (in BasicSR's `params_ema`), `Codeformer/
codeformer-v0.1.0.pth` (both at their only size: spandrel reads no size from them)
and a small `GFPGAN/RestoreFormer.pth`. Draws `face.png` (one face) and `faces.png`
(two), and for each model writes `<name>.expected.png`: face.png restored with
spandrel called directly (spandrel's own file loader, the network on our aligned crop
under the fixed seed), pasted back with our paste-back. Prints one JSON line: the
faces found in faces.png and in demo-shape pictures, and the expected pasted boxes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import cv2
import numpy as np
import spandrel
import spandrel_extra_arches
import torch
from PIL import Image
from spandrel.architectures.GFPGAN import GFPGAN
from spandrel.architectures.RestoreFormer import RestoreFormer
from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

from modules.training.shapes import random_truth, render
from modules.upscaling.face_align import align_matrix, paste_face, warp_crop
from modules.upscaling.face_detect import detect_faces
from modules.upscaling.face_models import RESTORE_SEED

WEIGHT = 0.7  # CodeFormer fidelity used by the test


def draw_eye(image: np.ndarray, ex: int, ey: int, s: int) -> None:
    """An almond eye: socket shadow, white, iris, pupil and a dark upper lid."""
    cv2.ellipse(image, (ex, ey), (int(0.24 * s), int(0.12 * s)), 0, 0, 360, (150, 115, 95), -1,
                cv2.LINE_AA)
    cv2.ellipse(image, (ex, ey), (int(0.17 * s), int(0.075 * s)), 0, 0, 360, (235, 235, 235),
                -1, cv2.LINE_AA)
    cv2.circle(image, (ex, ey), int(0.07 * s), (70, 50, 35), -1, cv2.LINE_AA)
    cv2.circle(image, (ex, ey), int(0.035 * s), (10, 10, 10), -1, cv2.LINE_AA)
    cv2.ellipse(image, (ex, ey), (int(0.17 * s), int(0.075 * s)), 0, 180, 360, (30, 20, 15),
                max(1, s // 40), cv2.LINE_AA)


def draw_face(image: np.ndarray, cx: int, cy: int, s: int) -> None:
    """A frontal face (skin oval, brows, eyes, nose, mouth) of half-width s, its eyes at
    (cx -/+ 0.4 s, cy - 0.25 s)."""
    cv2.ellipse(image, (cx, cy), (s, int(s * 1.3)), 0, 0, 360, (200, 160, 130), -1, cv2.LINE_AA)
    for side in (-1, 1):
        ex, ey = cx + side * int(0.4 * s), cy - int(0.25 * s)
        cv2.ellipse(image, (ex, ey - int(0.25 * s)), (int(0.26 * s), int(0.06 * s)), 0, 180,
                    360, (60, 40, 30), -1, cv2.LINE_AA)
        draw_eye(image, ex, ey, s)
    cv2.ellipse(image, (cx, cy + int(0.2 * s)), (int(0.12 * s), int(0.08 * s)), 0, 0, 360,
                (160, 120, 95), -1, cv2.LINE_AA)
    cv2.ellipse(image, (cx, cy + int(0.6 * s)), (int(0.35 * s), int(0.1 * s)), 0, 0, 360,
                (150, 60, 60), -1, cv2.LINE_AA)
    image[:] = cv2.GaussianBlur(image, (0, 0), s * 0.03)


def picture(size: tuple[int, int], faces: list[tuple[int, int, int]]) -> np.ndarray:
    image = np.full((size[1], size[0], 3), 90, np.uint8)
    for face in faces:
        draw_face(image, *face)
    return image


def write_models(out: Path) -> dict[str, Path]:
    torch.manual_seed(0)
    nets = {"GFPGAN": (GFPGAN(), "GFPGAN/GFPGANv1.4.pth", True),
            "CodeFormer": (CodeFormer(), "Codeformer/codeformer-v0.1.0.pth", False),
            "RestoreFormer": (RestoreFormer(n_embed=64, embed_dim=32, ch=32, num_res_blocks=1,
                                            z_channels=32), "GFPGAN/RestoreFormer.pth", False)}
    files = {}
    for name, (net, relative, wrapped) in nets.items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        state = net.state_dict()
        torch.save({"params_ema": state} if wrapped else state, path)
        files[name] = path
    return files


def direct(descriptor, name: str, crop: np.ndarray) -> np.ndarray:
    """spandrel's network on the crop, called as A1111 calls it, under our fixed seed."""
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(RESTORE_SEED)
        if name == "RestoreFormer":
            y = descriptor(x)  # its call_fn normalises
        elif name == "CodeFormer":
            y = (descriptor.model(x * 2 - 1, weight=WEIGHT)[0] + 1) / 2
        else:
            y = (descriptor.model(x * 2 - 1)[0] + 1) / 2
    return y[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def main(out: Path) -> dict:
    spandrel_extra_arches.install()
    face = picture((384, 416), [(190, 200, 90)])
    faces = picture((768, 512), [(200, 250, 90), (560, 230, 70)])
    Image.fromarray(face).save(out / "face.png")
    Image.fromarray(faces).save(out / "faces.png")
    rng = np.random.default_rng(7)
    shapes = [render(random_truth(rng), resolution=512) for _ in range(24)]
    found = detect_faces(face)
    report = {"faces": [list(f.box) for f in detect_faces(faces)],
              "shape_faces": sum(len(detect_faces(s)) for s in shapes), "boxes": {},
              "eyes": [f.landmarks.tolist() for f in found if not f.estimated]}
    for name, path in write_models(out).items():
        descriptor = spandrel.ModelLoader().load_from_file(path).eval()
        result, boxes = face.copy(), []
        for detected in found:
            matrix = align_matrix(detected.landmarks)
            restored = direct(descriptor, name, warp_crop(result, matrix))
            result, box = paste_face(result, restored, matrix)
            boxes.append(list(box))
        Image.fromarray(result).save(out / f"{name}.expected.png")
        report["boxes"][name] = boxes
    return report


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))))
