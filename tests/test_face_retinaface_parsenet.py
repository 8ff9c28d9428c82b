"""facexlib's ParseNet (`models/facexlib/parsing_parsenet.pth`): its mask replaces the
feathered square at paste-back when the file is there.

The layout is written out below from the published network (facexlib's
`ParseNet(in_size=512, out_size=512, parsing_ch=19)`); random weights saved as a .pth
load by name through the safe reader; the mask keeps facexlib's face classes and is 0
at the crop's edges, so pixels outside the face are unchanged; the worker protocol and
the app choose the parser when the file is there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from modules.upscaling import face_parsenet as fp
from modules.upscaling.face_detect import parsenet_file, parser_for
from modules.upscaling.face_registry import FaceRestoreError
from tests.test_face_retinaface import BN, Exploit, restorers_with, shapes


def published_layout() -> dict[str, tuple[int, ...]]:
    """Encoder: conv 3->64, residual blocks down to 128, 256, 256, 256; body: ten at
    256; decoder: up to 256, 256, 128, 64; output convs to 3 and 19 channels. Convs with
    BatchNorm have no bias; shortcuts are plain convs with bias where size or width
    changes."""
    layout = {}

    def conv(name, cin, cout, norm):
        layout[f"{name}.conv2d.weight"] = (cout, cin, 3, 3)
        if not norm:
            layout[f"{name}.conv2d.bias"] = (cout,)
            return
        for part in BN:
            layout[f"{name}.norm.norm.{part}"] = () if part == "num_batches_tracked" else (cout,)

    def block(name, cin, cout, shortcut):
        if shortcut:
            conv(f"{name}.shortcut_func", cin, cout, False)
        conv(f"{name}.conv1", cin, cout, True)
        conv(f"{name}.conv2", cout, cout, True)

    conv("encoder.0", 3, 64, False)
    for i, (cin, cout) in enumerate(((64, 128), (128, 256), (256, 256), (256, 256)), 1):
        block(f"encoder.{i}", cin, cout, True)
    for i in range(10):
        block(f"body.{i}", 256, 256, False)
    for i, (cin, cout) in enumerate(((256, 256), (256, 256), (256, 128), (128, 64))):
        block(f"decoder.{i}", cin, cout, True)
    conv("out_img_conv", 64, 3, False)
    conv("out_mask_conv", 64, 19, False)
    return layout


@pytest.fixture(scope="module")
def net() -> fp.ParseNet:
    torch.manual_seed(0)
    return fp.ParseNet().eval()


def test_parsenet_matches_the_published_layout(net):
    assert shapes(net.state_dict()) == published_layout()
    assert sum(p.numel() for p in net.parameters()) == 21_303_254  # the ~85 MB file


@pytest.mark.slow
def test_random_weight_file_loads_by_name_and_gives_19_classes(net, tmp_path):
    path = tmp_path / fp.FILE_NAME
    torch.save(net.state_dict(), path)
    parser = parser_for(path)
    for ours, theirs in zip(net.state_dict().values(), parser.net.state_dict().values(),
                            strict=True):
        assert torch.equal(ours, theirs)
    crop = np.random.RandomState(0).randint(0, 255, (512, 512, 3), dtype=np.uint8)
    classes = parser.classes(crop)
    assert classes.shape == (512, 512) and 0 <= classes.min() and classes.max() < 19
    mask = parser(crop)
    assert mask.shape == (512, 512) and mask.dtype == np.float32


def test_damaged_parsing_files_are_clear_errors(net, tmp_path):
    bad = tmp_path / fp.FILE_NAME
    bad.write_bytes(pickle_of_exploit())
    with pytest.raises(fp.ParseNetError, match="parsing_parsenet.pth: cannot read the file"):
        fp.load_parsenet(bad)
    state = dict(net.state_dict())
    state["out_mask_conv.conv2d.weight"] = torch.zeros(18, 64, 3, 3)
    torch.save(state, bad)
    with pytest.raises(fp.ParseNetError, match="not facexlib's ParseNet .*1 misshapen"):
        fp.load_parsenet(bad)


def pickle_of_exploit() -> bytes:
    import pickle
    return pickle.dumps(Exploit())


def test_face_mask_keeps_facexlibs_face_classes():
    classes = np.full((512, 512), 17)  # hair everywhere
    classes[156:356, 156:356] = 1  # skin in the middle
    classes[400:, 200:300] = 14  # neck
    mask = fp.face_mask(classes)
    assert mask[256, 256] == pytest.approx(1, abs=1e-3)
    assert mask[:10].max() == 0 and mask[:, -10:].max() == 0  # the crop's edges
    assert mask[60, 60] < 1e-3 and mask[480, 250] < 1e-3  # hair, neck: left out
    assert 0.2 < mask[256, 156] < 0.8  # soft at the face's border
    assert fp.FACE_CLASSES == (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 15)


# Paste-back warps with OpenCV, which lives in the upscaler interpreter (where the
# restoration runs): this runs there and prints what the test checks.
PASTE_CHECK = """
import json
import numpy as np
from modules.upscaling.face_align import FFHQ_TEMPLATE, align_matrix, paste_face
from modules.upscaling.face_detect import Face
from modules.upscaling.face_restore import restore_faces

image = np.random.RandomState(0).randint(0, 255, (300, 280, 3), dtype=np.uint8)
landmarks = FFHQ_TEMPLATE * 0.4 + [30, 40]  # crop x = 2.5 * (picture x - 30)
white = np.full((512, 512, 3), 255, np.uint8)
none, _ = paste_face(image, white, align_matrix(landmarks), np.zeros((512, 512), np.float32))
half = np.zeros((512, 512), np.float32)
half[:, :256] = 1  # the crop's left half only

class White:
    def restore(self, crop, weight):
        return white

face = Face(box=(30, 40, 200, 200), landmarks=landmarks, estimated=False)
out, _ = restore_faces(image, White(), 0.5, lambda _: [face], parse=lambda crop: half)
middle = round(256 * 0.4 + 30)  # the picture column of the crop's middle
print(json.dumps({"zero_mask_unchanged": bool(np.array_equal(none, image)),
                  "left_restored": bool((out[60:220, 40:middle - 2] == 255).all()),
                  "right_unchanged": bool(np.array_equal(out[:, middle + 2:],
                                                         image[:, middle + 2:]))}))
"""


@pytest.mark.slow
def test_the_parse_mask_replaces_the_feathered_square():
    from tests.test_upscalers_spandrel import run_in, spandrel_python

    result = json.loads(run_in(spandrel_python(), "-c", PASTE_CHECK))
    assert result == {"zero_mask_unchanged": True, "left_restored": True,
                      "right_unchanged": True}


def test_the_parser_is_chosen_when_its_file_is_there(tmp_path):
    from modules.upscaling.worker import Worker

    assert parsenet_file(tmp_path) is None and parser_for(None) is None
    captured = []
    restorers = restorers_with(tmp_path, False, captured)
    restorers.restore(Image.new("RGB", (8, 8)), "GFPGAN")
    assert "parser" not in captured[-1]
    (tmp_path / "facexlib" / fp.FILE_NAME).write_bytes(b"")
    assert parsenet_file(tmp_path / "facexlib") == tmp_path / "facexlib" / fp.FILE_NAME
    restorers.restore(Image.new("RGB", (8, 8)), "GFPGAN")
    assert captured[-1]["parser"] == str(tmp_path / "facexlib" / fp.FILE_NAME)
    assert Worker(device=torch.device("cpu")).parser(None) is None
    with pytest.raises(FaceRestoreError, match="parsing_parsenet.pth: cannot read the file"):
        restorers._parser(tmp_path / "facexlib" / fp.FILE_NAME)  # an empty file
