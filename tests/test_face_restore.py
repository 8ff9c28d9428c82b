"""Face restoration: GFPGAN, CodeFormer and RestoreFormer files through spandrel.

The files are random weights in the real key layouts, built by spandrel's own
architecture classes in the upscaler interpreter (`tests/helpers/face_restore_files.py`),
which also computes the reference: spandrel called directly on our aligned crop. The
app's restoration (detect -> align -> worker -> network -> paste-back) must equal it
exactly, and leave every pixel outside the pasted face boxes unchanged. Detection finds
the drawn faces and none in the demo's coloured shapes. Missing and bad files: an error
naming the folder and the file.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from modules.upscaling.face_align import FFHQ_TEMPLATE, align_matrix, feather_mask
from modules.upscaling.face_registry import FaceRestoreError, FaceRestorers
from modules.upscaling.registry import UpscalerRegistry
from tests.test_upscalers_spandrel import run_in, spandrel_python

CODEFORMER_WEIGHT = 0.7  # the helper's WEIGHT


def restorers_over(models, spandrel=None) -> FaceRestorers:
    upscalers = UpscalerRegistry(folders=[models / "ESRGAN"], spandrel_python=spandrel)
    return FaceRestorers(folders={"GFPGAN": models / "GFPGAN",
                                  "Codeformer": models / "Codeformer"}, upscalers=upscalers)


def test_two_eyes_map_exactly_onto_the_ffhq_template():
    eyes = np.array([[100.0, 80.0], [140.0, 90.0]])  # a tilted face
    matrix = align_matrix(eyes)
    mapped = np.c_[eyes, np.ones(2)] @ matrix.T
    assert np.allclose(mapped, FFHQ_TEMPLATE[:2], atol=1e-9)
    assert np.isclose(matrix[0, 0], matrix[1, 1]) and np.isclose(matrix[0, 1], -matrix[1, 0])


def test_feather_mask_is_one_inside_and_fades_at_the_edges():
    mask = feather_mask()
    assert mask.shape == (512, 512) and mask[256, 256] == 1 and mask[100:412, 100:412].min() == 1
    assert mask[0].max() < 0.05 and mask[:, -1].max() < 0.05


def test_missing_restorer_names_the_folder_and_the_file(tmp_path):
    restorers = restorers_over(tmp_path)
    assert restorers.list() == []
    image = Image.new("RGB", (64, 64))
    with pytest.raises(FaceRestoreError, match=r"models/Codeformer/.*|codeformer-v0\.1\.0\.pth"):
        restorers.restore(image, "CodeFormer")
    with pytest.raises(FaceRestoreError, match=r"GFPGANv1\.4\.pth into the models/GFPGAN/"):
        restorers.restore(image, "GFPGAN")
    with pytest.raises(FaceRestoreError, match="unknown face restorer 'Nope'"):
        restorers.restore(image, "Nope")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    report = json.loads(run_in(spandrel_python(), "tests/helpers/face_restore_files.py",
                               str(models)))
    return models, report


@pytest.fixture(scope="module")
def restorers(made):
    restorers = restorers_over(made[0], spandrel_python())
    yield restorers
    restorers.upscalers.close()


@pytest.mark.slow
def test_detection_finds_drawn_faces_and_eyes_and_none_in_demo_shapes(made):
    _, report = made
    boxes = sorted(report["faces"])
    assert len(boxes) == 2
    for (x, y, w, h), (cx, cy) in zip(boxes, [(200, 250), (560, 230)], strict=True):
        assert x < cx < x + w and y < cy < y + h
    assert report["shape_faces"] == 0  # 24 demo pictures of circles, squares, triangles
    [eyes] = report["eyes"]  # face.png's eyes, found by the eye cascade (aligned on them)
    assert np.abs(np.array(eyes) - [[154, 178], [226, 178]]).max() <= 4


@pytest.mark.slow
def test_installed_restorers_are_listed(restorers, made):
    listed = {info.name: info for info in restorers.list()}
    assert list(listed) == ["CodeFormer", "GFPGAN", "RestoreFormer"]
    assert listed["GFPGAN"].cmd_dir == str(made[0] / "GFPGAN")
    assert listed["CodeFormer"].path.endswith("codeformer-v0.1.0.pth")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["GFPGAN", "CodeFormer", "RestoreFormer"])
def test_restoration_equals_spandrel_on_the_aligned_crop(restorers, made, name):
    models, report = made
    face = Image.open(models / "face.png").convert("RGB")
    out = np.asarray(restorers.restore(face, name, weight=CODEFORMER_WEIGHT), dtype=np.int16)
    expected = np.asarray(Image.open(models / f"{name}.expected.png"), dtype=np.int16)
    assert np.array_equal(out, expected)  # the same network output, pasted the same way
    original = np.asarray(face, dtype=np.int16)
    outside = np.ones(original.shape[:2], bool)
    assert report["boxes"][name]  # the face was found
    for x0, y0, x1, y1 in report["boxes"][name]:
        outside[y0:y1, x0:x1] = False
        assert np.abs(out[y0:y1, x0:x1] - original[y0:y1, x0:x1]).max() > 8  # restored
    assert outside.any() and np.abs(out - original)[outside].max() <= 1


@pytest.mark.slow
def test_bad_files_are_clear_errors(tmp_path):
    folder = tmp_path / "GFPGAN"
    folder.mkdir()
    (folder / "GFPGANv1.4.pth").write_bytes(b"not a pickle at all")
    evil = {"params_ema": pickle.loads(pickle.dumps({}))}
    restorers = restorers_over(tmp_path, spandrel_python())
    try:
        with pytest.raises(FaceRestoreError, match="GFPGAN.*GFPGANv1.4.pth"):
            restorers.restore(Image.new("RGB", (64, 64)), "GFPGAN")
        (folder / "GFPGANv1.4.pth").write_bytes(pickle.dumps(Exploit()))
        with pytest.raises(FaceRestoreError, match="GFPGANv1.4.pth"):
            restorers.restore(Image.new("RGB", (64, 64)), "GFPGAN")
        import torch
        torch.save(evil, folder / "GFPGANv1.4.pth")  # a readable file of no architecture
        with pytest.raises(FaceRestoreError, match="not a model architecture spandrel knows"):
            restorers.restore(Image.new("RGB", (64, 64)), "GFPGAN")
    finally:
        restorers.upscalers.close()


class Exploit:
    """A pickle that would run a command if it were unpickled without an allow-list."""

    def __reduce__(self):
        import os
        return os.system, ("echo pwned",)
