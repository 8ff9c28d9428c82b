"""facexlib's RetinaFace face detector (`detection_Resnet50_Final.pth`), our own module.

The file holds the ResNet-50 RetinaFace of biubug6/Pytorch_Retinaface that facexlib (and
so A1111's GFPGAN/CodeFormer helper) uses. `RetinaFace` below names its parameters as
that file does, so the file loads by name: `body.*` is torchvision's resnet50 up to
layer4 (no pool, no fc), `fpn.output{1,2,3}` / `fpn.merge{1,2}` the feature pyramid over
layer2-4, `ssh{1,2,3}` the three context modules, `ClassHead.i` / `BboxHead.i` /
`LandmarkHead.i` (`.conv1x1`) the per-level 1x1 heads, two anchors per position.
torchvision is not needed (the app's torch may have none): the ResNet is built here.

Detection follows facexlib's `RetinaFace.detect_faces` as its FaceRestoreHelper calls it:
BGR input minus the mean (104, 117, 123), prior boxes (min sizes 16/32, 64/128,
256/512 at steps 8, 16, 32, not clipped), boxes and five landmarks decoded with the
variances (0.1, 0.2), scores above `CONFIDENCE` (0.97) kept, non-maximum suppression at
IoU `NMS_IOU` (0.4). As A1111 asks the helper (`resize=640`), the picture is resized so
its short side is 640 px for detection (the boxes scaled back), and faces whose eyes
are under 5 px apart are dropped (side views, specks).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FILE_NAME = "detection_Resnet50_Final.pth"
MEAN_BGR = (104.0, 117.0, 123.0)
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
CONFIDENCE = 0.97
NMS_IOU = 0.4
DETECT_SHORT_SIDE = 640
MIN_EYE_DISTANCE = 5.0
ANCHORS = 2
FPN_CHANNELS = 256


class RetinaFaceError(ValueError):
    """A RetinaFace file that cannot be used; the message names the file."""


def _conv_bn(cin: int, cout: int, kernel: int, relu: bool) -> nn.Sequential:
    """Conv (no bias) + BatchNorm (+ ReLU): the file's `<name>.0` / `<name>.1` pairs.
    The original's LeakyReLU has slope 0 at 256 channels, a plain ReLU."""
    layers = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 v1.5 block (stride on the 3x3 conv), its names."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet50Body(nn.Module):
    """ResNet-50 up to layer4; returns layer2, layer3 and layer4 (strides 8, 16, 32)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for index, (blocks, width, stride) in enumerate(
                ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2)), start=1):
            layer = []
            for block in range(blocks):
                layer.append(Bottleneck(cin, width, stride if block == 0 else 1))
                cin = width * 4
            setattr(self, f"layer{index}", nn.Sequential(*layer))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


class FPN(nn.Module):
    """Lateral 1x1s, top-down nearest upsampling, a 3x3 merge on the two finer levels."""

    def __init__(self, channels: tuple[int, ...], out: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(channels[0], out, 1, relu=True)
        self.output2 = _conv_bn(channels[1], out, 1, relu=True)
        self.output3 = _conv_bn(channels[2], out, 1, relu=True)
        self.merge1 = _conv_bn(out, out, 3, relu=True)
        self.merge2 = _conv_bn(out, out, 3, relu=True)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3 = self.output3(features[2])
        p2 = self.output2(features[1])
        p2 = self.merge2(p2 + F.interpolate(p3, size=p2.shape[-2:], mode="nearest"))
        p1 = self.output1(features[0])
        p1 = self.merge1(p1 + F.interpolate(p2, size=p1.shape[-2:], mode="nearest"))
        return [p1, p2, p3]


class SSH(nn.Module):
    """The context module: 3x3, 5x5 (two 3x3) and 7x7 (three 3x3) branches, concatenated
    (half, quarter, quarter of the channels) and ReLU'd. Names as in the file (note the
    lower-case `conv7x7_3`)."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(cin, out // 2, 3, relu=False)
        self.conv5X5_1 = _conv_bn(cin, out // 4, 3, relu=True)
        self.conv5X5_2 = _conv_bn(out // 4, out // 4, 3, relu=False)
        self.conv7X7_2 = _conv_bn(out // 4, out // 4, 3, relu=True)
        self.conv7x7_3 = _conv_bn(out // 4, out // 4, 3, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.conv5X5_1(x)
        second = self.conv7X7_2(first)
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(first),
                                 self.conv7x7_3(second)], dim=1))


class Head(nn.Module):
    """A 1x1 conv giving `per_anchor` numbers per anchor, as (B, H*W*anchors, per_anchor)
    in (row, column, anchor) order, the order of `prior_boxes`."""

    def __init__(self, cin: int, per_anchor: int) -> None:
        super().__init__()
        self.per_anchor = per_anchor
        self.conv1x1 = nn.Conv2d(cin, ANCHORS * per_anchor, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.per_anchor)


class RetinaFace(nn.Module):
    """The network: BGR minus mean in, (boxes offsets, class scores after softmax,
    landmark offsets) per prior out."""

    def __init__(self) -> None:
        super().__init__()
        self.body = ResNet50Body()
        self.fpn = FPN((512, 1024, 2048), FPN_CHANNELS)
        self.ssh1 = SSH(FPN_CHANNELS, FPN_CHANNELS)
        self.ssh2 = SSH(FPN_CHANNELS, FPN_CHANNELS)
        self.ssh3 = SSH(FPN_CHANNELS, FPN_CHANNELS)
        self.ClassHead = nn.ModuleList(Head(FPN_CHANNELS, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(Head(FPN_CHANNELS, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(Head(FPN_CHANNELS, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        levels = self.fpn(self.body(x))
        features = [self.ssh1(levels[0]), self.ssh2(levels[1]), self.ssh3(levels[2])]
        loc = torch.cat([h(f) for h, f in zip(self.BboxHead, features, strict=True)], 1)
        conf = torch.cat([h(f) for h, f in zip(self.ClassHead, features, strict=True)], 1)
        landm = torch.cat([h(f) for h, f in zip(self.LandmarkHead, features, strict=True)], 1)
        return loc, F.softmax(conf, dim=-1), landm


def prior_boxes(height: int, width: int) -> np.ndarray:
    """(N, 4) anchors (cx, cy, w, h) as fractions of the picture: per level, per row,
    per column, per min size; feature maps of ceil(size / step)."""
    anchors = []
    for sizes, step in zip(MIN_SIZES, STEPS, strict=True):
        rows, cols = math.ceil(height / step), math.ceil(width / step)
        for i, j in itertools.product(range(rows), range(cols)):
            for size in sizes:
                anchors.append(((j + 0.5) * step / width, (i + 0.5) * step / height,
                                size / width, size / height))
    return np.array(anchors, dtype=np.float64).reshape(-1, 4)


def decode_boxes(loc: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """(N, 4) offsets -> (x0, y0, x1, y1) as fractions of the picture."""
    centre = priors[:, :2] + loc[:, :2] * VARIANCE[0] * priors[:, 2:]
    size = priors[:, 2:] * np.exp(loc[:, 2:] * VARIANCE[1])
    return np.concatenate([centre - size / 2, centre + size / 2], axis=1)


def decode_landmarks(landm: np.ndarray, priors: np.ndarray) -> np.ndarray:
    """(N, 10) offsets -> (N, 5, 2) points as fractions of the picture."""
    offsets = landm.reshape(-1, 5, 2)
    return priors[:, None, :2] + offsets * VARIANCE[0] * priors[:, None, 2:]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> list[int]:
    """Greedy non-maximum suppression (highest score first; a box goes when its IoU with
    a kept one is above `iou`), areas without a +1 as torchvision's `nms`, which
    facexlib's `py_cpu_nms` calls; the indices kept."""
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    order = list(np.argsort(-scores, kind="stable"))
    keep = []
    while order:
        best, rest = order[0], np.array(order[1:], dtype=int)
        keep.append(int(best))
        if not len(rest):
            break
        w = np.maximum(0.0, np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]))
        h = np.maximum(0.0, np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]))
        overlap = w * h / (areas[best] + areas[rest] - w * h)
        order = list(rest[overlap <= iou])
    return keep


def postprocess(loc: np.ndarray, conf: np.ndarray, landm: np.ndarray, priors: np.ndarray,
                width: int, height: int, *, confidence: float = CONFIDENCE,
                iou: float = NMS_IOU) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Network outputs for one picture -> (boxes (K, 4) x0 y0 x1 y1 px, scores (K,),
    landmarks (K, 5, 2) px), the faces above `confidence` after NMS, best first."""
    scale = np.array([width, height], dtype=np.float64)
    boxes = decode_boxes(loc, priors) * np.tile(scale, 2)
    points = decode_landmarks(landm, priors) * scale
    scores = conf[:, 1]
    chosen = np.flatnonzero(scores > confidence)
    boxes, scores, points = boxes[chosen], scores[chosen], points[chosen]
    keep = nms(boxes, scores, iou)
    return boxes[keep], scores[keep], points[keep]


def load_by_name(net: nn.Module, path: Path, device, label: str,
                 error: type[ValueError]) -> nn.Module:
    """`net` with the tensors of the file at `path` (read by the safe readers, a leading
    "module." stripped), in eval mode on `device`; `error` naming the file when it cannot
    be read or its tensors are not `net`'s (missing, unexpected or misshapen)."""
    from modules.models.errors import ModelLoadError
    from modules.upscaling.files import load_weights

    try:
        loaded = load_weights(path)
    except (ModelLoadError, OSError, ValueError) as failure:
        raise error(f"{path.name}: cannot read the file ({failure})") from failure
    state = {k.removeprefix("module."): v for k, v in loaded.items()}
    expected = net.state_dict()
    # BatchNorm's step counter is not used in eval; older files may not carry it.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape)
             != tuple(expected[k].shape)]
    if missing or extra or wrong:
        raise error(f"{path.name}: not {label} ({len(missing)} missing, {len(extra)} "
                    f"unexpected, {len(wrong)} misshapen tensors; e.g. "
                    f"{(missing + extra + wrong)[:3]})")
    net.load_state_dict(state, strict=False)
    return net.to(device).eval()


def load_retinaface(path: Path, device: torch.device | str = "cpu") -> RetinaFace:
    """Our RetinaFace with the weights of `path`; a RetinaFaceError naming the file."""
    return load_by_name(RetinaFace(), Path(path), device,
                        "facexlib's RetinaFace ResNet-50", RetinaFaceError)


class RetinaFaceDetector:
    """A loaded RetinaFace as a face detector: RGB uint8 picture -> faces."""

    def __init__(self, net: RetinaFace) -> None:
        self.net = net

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes, scores, landmarks) in the picture's pixels, as `postprocess`."""
        height, width = image.shape[:2]
        scale = DETECT_SHORT_SIDE / min(height, width)
        bgr = np.ascontiguousarray(image[..., ::-1])
        x = torch.from_numpy(bgr).to(self.device, torch.float32).permute(2, 0, 1)[None]
        size = (int(height * scale), int(width * scale))
        if size != (height, width):
            # facexlib resizes with cv2's Lanczos; torch's antialiased bicubic is close
            # and keeps this module free of OpenCV (the app's environment may lack it).
            x = F.interpolate(x, size=size, mode="bicubic", align_corners=False,
                              antialias=True).clamp(0, 255)
        h, w = x.shape[-2:]
        x = x - torch.tensor(MEAN_BGR, device=self.device).view(1, 3, 1, 1)
        loc, conf, landm = (t[0].double().cpu().numpy() for t in self.net(x))
        boxes, scores, points = postprocess(loc, conf, landm, prior_boxes(h, w), w, h)
        back = np.array([width / w, height / h])  # to the picture's pixels
        return boxes * np.tile(back, 2), scores, points * back

    def __call__(self, image: np.ndarray) -> list:
        """`face_detect.Face`s with five landmarks, largest box first."""
        from modules.upscaling.face_detect import Face

        boxes, _, points = self.detect(image)
        faces = []
        for (x0, y0, x1, y1), five in zip(boxes, points, strict=True):
            if np.linalg.norm(five[0] - five[1]) < MIN_EYE_DISTANCE:
                continue
            box = (int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))
            faces.append(Face(box=box, landmarks=five, estimated=False))
        return sorted(faces, key=lambda face: -face.box[2] * face.box[3])
