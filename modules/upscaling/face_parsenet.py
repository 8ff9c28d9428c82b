"""facexlib's face parsing network (`parsing_parsenet.pth`), our own module, and the
paste-back mask GFPGAN's face helper makes with it (`use_parse=True`, as A1111 runs it).

ParseNet (from PSFRGAN, as facexlib builds it for 512x512 crops, 19 classes) is an
encoder (a 3x3 conv to 64 channels, then four stride-2 residual blocks: 128, 256, 256,
256 channels, 32x32), a body of ten residual blocks at 256 channels added back to its
input, a decoder of four nearest-x2 residual blocks (256, 256, 128, 64 channels), and two
3x3 output convs: 3 channels (a picture, unused here) and 19 parsing logits. Every conv
pads by reflection; a residual block is conv-BatchNorm-LeakyReLU(0.2), conv-BatchNorm,
plus a shortcut (the input, or a plain conv with bias when the size or width changes).
Parameter names are the file's (`encoder.1.conv1.conv2d.weight`,
`encoder.1.conv1.norm.norm.running_mean`, `encoder.1.shortcut_func.conv2d.bias`, ...).

The mask: the restored crop in [-1, 1] through the network, the argmax class per pixel,
255 for the face classes (`FACE_CLASSES`: every class but background, neck, cloth, hair
and hat, as facexlib's MASK_COLORMAP), blurred twice by a 101x101 Gaussian of sigma 11,
zero within 10 px of the crop's edge, scaled to [0, 1].
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FILE_NAME = "parsing_parsenet.pth"
CLASSES = 19
# facexlib's MASK_COLORMAP: 0 background, 14 neck, 16 cloth, 17 hair, 18 hat are left out.
FACE_CLASSES = tuple(c for c in range(CLASSES) if c not in (0, 14, 16, 17, 18))
BLUR = (101, 11)  # kernel size, sigma; applied twice
EDGE = 10


class ParseNetError(ValueError):
    """A parsing file that cannot be used; the message names the file."""


class BatchNormWrapper(nn.Module):
    """Holds the BatchNorm as `.norm`, so its names are `<layer>.norm.norm.*`."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ConvLayer(nn.Module):
    """Optional nearest x2 upsampling, reflection pad 1, 3x3 conv (stride 2 to go down),
    optional BatchNorm (then no conv bias), optional LeakyReLU(0.2)."""

    def __init__(self, cin: int, cout: int, scale: str = "none", norm: bool = False,
                 relu: bool = False) -> None:
        super().__init__()
        self.up = scale == "up"
        self.conv2d = nn.Conv2d(cin, cout, 3, 2 if scale == "down" else 1, bias=not norm)
        self.norm = BatchNormWrapper(cout) if norm else None
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        if self.norm is not None:
            x = self.norm(x)
        return F.leaky_relu(x, 0.2) if self.relu else x


class ResidualBlock(nn.Module):
    """conv1 (with the up-sampling) and conv2 (with the down-sampling), plus a shortcut."""

    def __init__(self, cin: int, cout: int, scale: str = "none") -> None:
        super().__init__()
        self.shortcut_func = None
        if scale != "none" or cin != cout:
            self.shortcut_func = ConvLayer(cin, cout, scale)
        self.conv1 = ConvLayer(cin, cout, "up" if scale == "up" else "none", True, True)
        self.conv2 = ConvLayer(cout, cout, "down" if scale == "down" else "none", True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.shortcut_func is None else self.shortcut_func(x)
        return skip + self.conv2(self.conv1(x))


class ParseNet(nn.Module):
    """The 512x512, 19-class network facexlib's `init_parsing_model('parsenet')` builds."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            ConvLayer(3, 64), ResidualBlock(64, 128, "down"), ResidualBlock(128, 256, "down"),
            ResidualBlock(256, 256, "down"), ResidualBlock(256, 256, "down"))
        self.body = nn.Sequential(*(ResidualBlock(256, 256) for _ in range(10)))
        self.decoder = nn.Sequential(
            ResidualBlock(256, 256, "up"), ResidualBlock(256, 256, "up"),
            ResidualBlock(256, 128, "up"), ResidualBlock(128, 64, "up"))
        self.out_img_conv = ConvLayer(64, 3)
        self.out_mask_conv = ConvLayer(64, CLASSES)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(parsing logits, picture) for (B, 3, 512, 512) in [-1, 1]."""
        features = self.encoder(x)
        x = self.decoder(features + self.body(features))
        return self.out_mask_conv(x), self.out_img_conv(x)


def load_parsenet(path: Path, device: torch.device | str = "cpu") -> ParseNet:
    """Our ParseNet with the weights of `path` (read safely); a ParseNetError naming the
    file when it cannot be read or does not match the layout."""
    from modules.upscaling.face_retinaface import load_by_name

    return load_by_name(ParseNet(), Path(path), device, "facexlib's ParseNet",
                        ParseNetError)


class FaceParser:
    """A loaded ParseNet as a paste-back mask maker: restored 512x512 RGB crop -> mask."""

    def __init__(self, net: ParseNet) -> None:
        self.net = net

    @torch.inference_mode()
    def classes(self, crop: np.ndarray) -> np.ndarray:
        """The class of every pixel of an RGB uint8 512x512 crop."""
        device = next(self.net.parameters()).device
        x = torch.from_numpy(np.ascontiguousarray(crop)).to(device, torch.float32)
        x = x.permute(2, 0, 1)[None] / 127.5 - 1
        return self.net(x)[0].argmax(dim=1)[0].cpu().numpy()

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        return face_mask(self.classes(crop))


def face_mask(classes: np.ndarray) -> np.ndarray:
    """facexlib's soft mask from a class map: face classes 1, blurred, edges zeroed."""
    mask = torch.from_numpy(np.isin(classes, FACE_CLASSES).astype(np.float64) * 255)
    for _ in range(2):
        mask = gaussian_blur(mask, *BLUR)
    mask[:EDGE], mask[-EDGE:], mask[:, :EDGE], mask[:, -EDGE:] = 0, 0, 0, 0
    return (mask / 255).numpy().astype(np.float32)


def gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """cv2.GaussianBlur of a 2-D float64 picture (its kernel, its default border: mirror
    without repeating the edge pixel), in torch so the mask needs no OpenCV."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-x**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    out = F.pad(image[None, None], (size // 2,) * 4, mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, size))
    return F.conv2d(out, kernel.view(1, 1, size, 1))[0, 0]
