"""facexlib's RetinaFace (`models/facexlib/detection_Resnet50_Final.pth`) as our module.

The layout test compares our parameter names and shapes with the published layout of
the file (biubug6/Pytorch_Retinaface's ResNet-50 model, which facexlib loads by name):
the heads, FPN and SSH written out below from that layout, the body against
torchvision's own resnet50 in the upscaler interpreter. Random weights saved the way
facexlib's file is (a "module." prefix) load by name through the safe reader. Decoding,
NMS and the five landmarks are checked against hand-computed numbers, five-point
alignment against an exact similarity, and the detector choice (RetinaFace when the
file is there, OpenCV's cascades otherwise) in the app and in the worker protocol.
"""

from __future__ import annotations

import json
import math
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from modules.upscaling import face_retinaface as rf
from modules.upscaling.face_align import FFHQ_TEMPLATE, align_matrix
from modules.upscaling.face_detect import detect_faces, detector_for, retinaface_file
from modules.upscaling.face_registry import FaceRestoreError, FaceRestorers
from modules.upscaling.registry import UpscalerRegistry

UNREADABLE = "detection_Resnet50_Final.pth: cannot read the file"
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def published_head_layout() -> dict[str, tuple[int, ...]]:
    """The file's keys outside `body.`: FPN over layer2-4 (512, 1024, 2048 -> 256),
    three SSH modules (128 + 64 + 64 channels), three levels of 1x1 heads, 2 anchors."""
    layout = {}

    def conv_bn(name, cin, cout, k):
        layout[f"{name}.0.weight"] = (cout, cin, k, k)
        for part in BN:
            layout[f"{name}.1.{part}"] = () if part == "num_batches_tracked" else (cout,)

    for i, cin in enumerate((512, 1024, 2048), start=1):
        conv_bn(f"fpn.output{i}", cin, 256, 1)
    conv_bn("fpn.merge1", 256, 256, 3)
    conv_bn("fpn.merge2", 256, 256, 3)
    for s in ("ssh1", "ssh2", "ssh3"):
        conv_bn(f"{s}.conv3X3", 256, 128, 3)
        conv_bn(f"{s}.conv5X5_1", 256, 64, 3)
        conv_bn(f"{s}.conv5X5_2", 64, 64, 3)
        conv_bn(f"{s}.conv7X7_2", 64, 64, 3)
        conv_bn(f"{s}.conv7x7_3", 64, 64, 3)
    for head, per in (("ClassHead", 2), ("BboxHead", 4), ("LandmarkHead", 10)):
        for level in range(3):
            layout[f"{head}.{level}.conv1x1.weight"] = (2 * per, 256, 1, 1)
            layout[f"{head}.{level}.conv1x1.bias"] = (2 * per,)
    return layout


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture(scope="module")
def net() -> rf.RetinaFace:
    torch.manual_seed(0)
    net = rf.RetinaFace().eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong load shows
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return net


@pytest.fixture(scope="module")
def retinaface_path(net, tmp_path_factory):
    """The random weights saved as facexlib's file is: keys with "module.", no BatchNorm
    step counters."""
    folder = tmp_path_factory.mktemp("facexlib")
    state = {f"module.{k}": v for k, v in net.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    torch.save(state, folder / rf.FILE_NAME)
    return folder / rf.FILE_NAME


def test_heads_fpn_and_ssh_match_the_published_layout(net):
    ours = {k: v for k, v in shapes(net.state_dict()).items() if not k.startswith("body.")}
    assert ours == published_head_layout()
    body = {k: v for k, v in shapes(net.state_dict()).items() if k.startswith("body.")}
    assert len(body) == 318  # resnet50's 320 tensors less fc.weight and fc.bias
    assert body["body.conv1.weight"] == (64, 3, 7, 7)
    assert body["body.layer1.0.downsample.0.weight"] == (256, 64, 1, 1)
    assert body["body.layer2.0.conv2.weight"] == (128, 128, 3, 3)
    assert body["body.layer4.2.conv3.weight"] == (2048, 512, 1, 1)
    assert sum(p.numel() for p in net.parameters()) == 27_293_600  # the ~104 MiB file


@pytest.mark.slow
def test_body_is_torchvisions_resnet50_layout(net):
    from tests.test_upscalers_spandrel import run_in, spandrel_python

    code = ("import json, torchvision; s = torchvision.models.resnet50().state_dict(); "
            "print(json.dumps({k: list(v.shape) for k, v in s.items()}))")
    theirs = json.loads(run_in(spandrel_python(), "-c", code))
    expected = {f"body.{k}": tuple(v) for k, v in theirs.items() if not k.startswith("fc.")}
    ours = {k: v for k, v in shapes(net.state_dict()).items() if k.startswith("body.")}
    assert ours == expected


@pytest.mark.slow
def test_random_weight_file_loads_by_name_through_the_safe_reader(net, retinaface_path):
    loaded = rf.load_retinaface(retinaface_path)
    for (name, ours), theirs in zip(net.state_dict().items(), loaded.state_dict().values(),
                                    strict=True):
        if not name.endswith("num_batches_tracked"):
            assert torch.equal(ours, theirs), name
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(net(x), loaded(x), strict=True):
            assert torch.equal(a, b)


def test_damaged_files_are_clear_errors(net, tmp_path):
    bad = tmp_path / rf.FILE_NAME
    bad.write_bytes(b"not a pickle at all")
    with pytest.raises(rf.RetinaFaceError, match=UNREADABLE):
        rf.load_retinaface(bad)
    bad.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(rf.RetinaFaceError, match=UNREADABLE):
        rf.load_retinaface(bad)
    state = dict(net.state_dict())
    state.pop("ssh2.conv3X3.0.weight")
    state["BboxHead.0.conv1x1.bias"] = torch.zeros(3)
    torch.save(state, bad)
    with pytest.raises(rf.RetinaFaceError, match=r"not facexlib's RetinaFace ResNet-50 \(1 "
                                                 r"missing, 0 unexpected, 1 misshapen"):
        rf.load_retinaface(bad)


def test_prior_boxes_follow_the_published_config():
    priors = rf.prior_boxes(32, 64)  # feature maps 4x8, 2x4, 1x2; two sizes each
    assert priors.shape == ((4 * 8 + 2 * 4 + 1 * 2) * 2, 4)
    assert np.allclose(priors[0], [4 / 64, 4 / 32, 16 / 64, 16 / 32])
    assert np.allclose(priors[1], [4 / 64, 4 / 32, 32 / 64, 32 / 32])
    assert np.allclose(priors[2], [12 / 64, 4 / 32, 16 / 64, 16 / 32])  # next column
    assert np.allclose(priors[16], [4 / 64, 12 / 32, 16 / 64, 16 / 32])  # next row
    assert np.allclose(priors[64], [8 / 64, 8 / 32, 64 / 64, 64 / 32])  # level 2 starts
    assert np.allclose(priors[-1], [48 / 64, 16 / 32, 512 / 64, 512 / 32])
    assert rf.prior_boxes(33, 64).shape[0] == (5 * 8 + 3 * 4 + 2 * 2) * 2  # ceil


def test_decoding_confidence_and_nms_against_hand_computed_boxes():
    priors = np.array([[0.5, 0.5, 0.2, 0.2],   # the face
                       [0.52, 0.5, 0.2, 0.2],  # the same face, lower score: suppressed
                       [0.2, 0.2, 0.1, 0.1],   # another face
                       [0.8, 0.8, 0.1, 0.1]])  # under the confidence threshold
    loc = np.array([[1.0, 0.0, 0.0, math.log(2) / 0.2], [0, 0, 0, math.log(2) / 0.2],
                    [0, -1.0, 0, 0], [0, 0, 0, 0]])
    conf = np.array([[0.01, 0.99], [0.02, 0.98], [0.025, 0.975], [0.5, 0.5]])
    landm = np.zeros((4, 10))
    landm[0] = [-5, -5, 5, -5, 0, 0, -3, 5, 3, 5]
    boxes, scores, points = rf.postprocess(loc, conf, landm, priors, 100, 200)
    # centre 0.5 + 1*0.1*0.2 = 0.52; width 0.2; height 0.2 * exp(log 2) = 0.4
    assert np.allclose(boxes[0], [42, 60, 62, 140])
    # centre y 0.2 - 0.1*0.1 = 0.19; 0.1 x 0.1
    assert np.allclose(boxes[1], [15, 28, 25, 48])
    assert np.allclose(scores, [0.99, 0.975])
    # landmark = prior centre + offset * 0.1 * prior size: 0.5 -/+ 5*0.02 = 0.4, 0.6
    assert np.allclose(points[0], [[40, 80], [60, 80], [50, 100], [44, 120], [56, 120]])
    assert np.allclose(points[1], np.tile([20, 40], (5, 1)))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [0, 6, 9, 15], [20, 20, 29, 29]], float)
    scores = np.array([0.9, 0.95, 0.8, 0.7])
    # IoU(1, 0) = 72/90 > 0.4: 0 goes; IoU(1, 2) = 24/138: 2 stays
    assert rf.nms(boxes, scores, 0.4) == [1, 2, 3]


def test_five_point_alignment_maps_landmarks_onto_the_template():
    angle, scale, shift = 0.3, 0.42, np.array([37.0, -12.5])
    rotation = scale * np.array([[math.cos(angle), -math.sin(angle)],
                                 [math.sin(angle), math.cos(angle)]])
    landmarks = FFHQ_TEMPLATE @ rotation.T + shift  # a face the template fits exactly
    matrix = align_matrix(landmarks)
    mapped = np.c_[landmarks, np.ones(5)] @ matrix.T
    assert np.abs(mapped - FFHQ_TEMPLATE).max() < 0.5
    assert np.abs(mapped - FFHQ_TEMPLATE).max() < 1e-6  # least squares is exact here


class FakeNet(torch.nn.Module):
    """Outputs chosen by hand: one face on prior `index` (zero offsets: the prior box)."""

    def __init__(self, index: int, landmarks: np.ndarray) -> None:
        super().__init__()
        self.index, self.landmarks = index, landmarks
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        count = rf.prior_boxes(*x.shape[-2:]).shape[0]
        self.seen = tuple(x.shape)
        conf = torch.tensor([1.0, 0.0]).repeat(1, count, 1)
        conf[0, self.index] = torch.tensor([0.0, 1.0])
        landm = torch.zeros(1, count, 10)
        landm[0, self.index] = torch.from_numpy(self.landmarks).float()
        return torch.zeros(1, count, 4), conf, landm


def test_detector_finds_the_face_in_the_original_pictures_pixels():
    # A 160x80 picture is enlarged to 1280x640 (short side 640), an 8x factor.
    priors = rf.prior_boxes(640, 1280)
    levels = 2 * (80 * 160 + 40 * 80)  # the priors of the stride 8 and 16 levels
    index = levels + 2 * (5 * 40 + 10) + 1  # stride 32, row 5, column 10, 512 px anchor
    assert np.allclose(priors[index], [10.5 * 32 / 1280, 5.5 * 32 / 640, 0.4, 0.8])
    offsets = np.array([-5, -5, 5, -5, 0, 0, -3, 5, 3, 5], float)
    fake = FakeNet(index, offsets)
    faces = rf.RetinaFaceDetector(fake)(np.zeros((80, 160, 3), np.uint8))
    assert fake.seen == (1, 3, 640, 1280)
    [face] = faces  # centre (42, 22), 512 / 8 = 64 px wide, in the picture's pixels
    assert face.box == (10, -10, 64, 64) and not face.estimated
    # eyes at the centre -/+ 5 * 0.1 * 64 px
    assert np.allclose(face.landmarks, [[10, -10], [74, -10], [42, 22], [22.8, 54], [61.2, 54]])
    fake.landmarks = np.zeros(10)  # eyes on one point: a side view or a speck, dropped
    assert rf.RetinaFaceDetector(fake)(np.zeros((80, 160, 3), np.uint8)) == []


@pytest.mark.slow
def test_random_weight_detector_runs_end_to_end(retinaface_path):
    detector = detector_for(retinaface_path)
    image = np.random.RandomState(0).randint(0, 255, (48, 64, 3), dtype=np.uint8)
    boxes, scores, points = detector.detect(image)
    assert boxes.shape[1:] == (4,) and points.shape[1:] == (5, 2)
    assert (scores > rf.CONFIDENCE).all()


def restorers_with(tmp_path, retinaface: bool, captured: list) -> FaceRestorers:
    """Restorers with a GFPGAN file (only its name matters here) whose worker is a fake
    that records the request."""
    (tmp_path / "GFPGAN").mkdir(exist_ok=True)
    (tmp_path / "GFPGAN" / "GFPGANv1.4.pth").write_bytes(b"")
    (tmp_path / "facexlib").mkdir(exist_ok=True)
    if retinaface:
        (tmp_path / "facexlib" / rf.FILE_NAME).write_bytes(b"")

    def request(header, payload):
        captured.append(header)
        return {"width": header["width"], "height": header["height"]}, payload

    upscalers = UpscalerRegistry(folders=[tmp_path / "ESRGAN"])
    upscalers.spandrel = lambda: SimpleNamespace(
        in_process=False, worker=SimpleNamespace(request=request))
    return FaceRestorers(folders={"GFPGAN": tmp_path / "GFPGAN",
                                  "Codeformer": tmp_path / "Codeformer",
                                  "facexlib": tmp_path / "facexlib"}, upscalers=upscalers)


def test_retinaface_is_chosen_when_its_file_is_there(tmp_path):
    assert retinaface_file(tmp_path) is None and retinaface_file(None) is None
    assert detector_for(None) is detect_faces
    (tmp_path / rf.FILE_NAME).write_bytes(b"")
    assert retinaface_file(tmp_path) == tmp_path / rf.FILE_NAME
    captured = []
    restorers_with(tmp_path, False, captured).restore(Image.new("RGB", (8, 8)), "GFPGAN")
    assert "detector" not in captured[-1]  # the worker uses OpenCV's cascades
    restorers_with(tmp_path, True, captured).restore(Image.new("RGB", (8, 8)), "GFPGAN")
    assert captured[-1]["detector"] == str(tmp_path / "facexlib" / rf.FILE_NAME)


@pytest.mark.slow
def test_in_process_and_worker_pick_the_same_detector(tmp_path, retinaface_path):
    from modules.upscaling.worker import Worker

    restorers = restorers_with(tmp_path, False, [])
    assert restorers._detect(None) is detect_faces
    assert isinstance(restorers._detect(retinaface_path), rf.RetinaFaceDetector)
    worker = Worker(device=torch.device("cpu"))
    assert worker.detector(None) is detect_faces
    assert isinstance(worker.detector(str(retinaface_path)), rf.RetinaFaceDetector)
    broken = tmp_path / "facexlib" / rf.FILE_NAME
    broken.write_bytes(b"garbage")
    with pytest.raises(FaceRestoreError, match=UNREADABLE):
        restorers._detect(broken)
    with pytest.raises(rf.RetinaFaceError, match="detection_Resnet50_Final.pth"):
        worker.detector(str(broken))


class Exploit:
    """A pickle that would run a command if it were unpickled without an allow-list."""

    def __reduce__(self):
        import os
        return os.system, ("echo pwned",)


@pytest.fixture(scope="module")
def restorer_files(tmp_path_factory):
    """Random-weight restorer files and face.png (`tests/helpers/face_restore_files.py`)."""
    from tests.test_upscalers_spandrel import run_in, spandrel_python

    models = tmp_path_factory.mktemp("models")
    report = run_in(spandrel_python(), "tests/helpers/face_restore_files.py", str(models))
    return models, json.loads(report)


@pytest.mark.slow
def test_the_worker_uses_the_facexlib_files(restorer_files, net, tmp_path):
    """Through the real upscaler worker with a random-weight GFPGAN file: ParseNet's
    mask changes the paste-back (within the same boxes), and a RetinaFace that scores
    every prior as background finds nothing where OpenCV's cascades find the face."""
    from modules.upscaling.face_parsenet import FILE_NAME, ParseNet
    from tests.test_upscalers_spandrel import spandrel_python

    models, report = restorer_files
    facexlib = tmp_path / "facexlib"
    facexlib.mkdir()
    upscalers = UpscalerRegistry(folders=[models / "ESRGAN"], spandrel_python=spandrel_python())
    restorers = FaceRestorers(folders={"GFPGAN": models / "GFPGAN", "facexlib": facexlib,
                                       "Codeformer": models / "Codeformer"}, upscalers=upscalers)
    face = Image.open(models / "face.png").convert("RGB")
    original = np.asarray(face, dtype=np.int16)
    square = np.asarray(Image.open(models / "GFPGAN.expected.png"), dtype=np.int16)
    try:
        torch.manual_seed(1)
        torch.save(ParseNet().state_dict(), facexlib / FILE_NAME)
        parsed = np.asarray(restorers.restore(face, "GFPGAN"), dtype=np.int16)
        assert not np.array_equal(parsed, square)  # not the feathered square's paste
        outside = np.ones(original.shape[:2], bool)
        for x0, y0, x1, y1 in report["boxes"]["GFPGAN"]:
            outside[y0:y1, x0:x1] = False
        assert np.abs(parsed - original)[outside].max() <= 1

        (facexlib / FILE_NAME).unlink()
        state = dict(net.state_dict())
        for level in range(3):
            state[f"ClassHead.{level}.conv1x1.weight"] = torch.zeros(4, 256, 1, 1)
            state[f"ClassHead.{level}.conv1x1.bias"] = torch.tensor([10.0, -10, 10, -10])
        torch.save(state, facexlib / rf.FILE_NAME)
        assert np.array_equal(np.asarray(restorers.restore(face, "GFPGAN")), np.asarray(face))
    finally:
        upscalers.close()
