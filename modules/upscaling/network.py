"""A loaded upscaler network and how it is run over a picture: in overlapping tiles.

Upscaler networks are fully convolutional (or windowed attention), so a large picture
can be cut into tiles that are run one by one: memory stays bounded by the tile. The
tiles overlap, and the results are blended with linear ramps across each overlap so
that the different context at a tile's edge never shows as a seam.

Both the app process and the separate spandrel worker (`worker.py`) run models through
`UpscaleModel.apply`, so tiling is the same wherever the network lives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image


def _ramp(length: int, overlap: int, start: bool, end: bool) -> torch.Tensor:
    """Weights along one axis: linear ramps over the overlapping ends."""
    weights = torch.ones(length)
    ramp = torch.linspace(0, 1, overlap + 2)[1:-1] if overlap > 0 else torch.ones(0)
    if start and overlap:
        weights[:overlap] = ramp
    if end and overlap:
        weights[-overlap:] = ramp.flip(0)
    return weights


def _starts(size: int, tile: int, stride: int) -> list[int]:
    if size <= tile:
        return [0]
    return list(range(0, size - tile, stride)) + [size - tile]


@torch.no_grad()
def tiled_apply(network, x: torch.Tensor, *, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """`network(x)` computed in overlapping tiles, blended (tile 0 = in one piece)."""
    height, width = x.shape[-2:]
    if tile <= 0 or (height <= tile and width <= tile):
        return network(x).float().cpu()
    overlap = min(overlap, tile // 2)
    out = torch.zeros(x.shape[0], 3, height * scale, width * scale)
    total = torch.zeros(1, 1, height * scale, width * scale)
    ys, xs = _starts(height, tile, tile - overlap), _starts(width, tile, tile - overlap)
    for y in ys:
        for x0 in xs:
            patch = x[..., y:y + tile, x0:x0 + tile]
            result = network(patch).float().cpu()
            h, w = result.shape[-2:]
            weight = (_ramp(h, overlap * scale, y > 0, y + tile < height)[:, None]
                      * _ramp(w, overlap * scale, x0 > 0, x0 + tile < width)[None, :])
            out[..., y * scale:y * scale + h, x0 * scale:x0 * scale + w] += result * weight
            total[..., y * scale:y * scale + h, x0 * scale:x0 * scale + w] += weight
    return out / total


def image_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def tensor_to_image(x: torch.Tensor) -> Image.Image:
    array = x[0].detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(array.permute(1, 2, 0).numpy()))


@dataclass
class UpscaleModel:
    """A loaded network: (B, 3, H, W) in [0, 1] -> (B, 3, H * scale, W * scale).

    `arch` names the architecture for messages ("ESRGAN", "SwinIR", ...); `tileable`
    is False for networks that tile internally (spandrel's `ModelTiling.INTERNAL`),
    which are always run in one piece.
    """

    network: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    arch: str = "ESRGAN"
    device: torch.device = torch.device("cpu")
    tileable: bool = True

    def apply(self, image: Image.Image, *, tile: int, overlap: int) -> Image.Image:
        """One pass of the network over `image`, in tiles of `tile` px (0: whole)."""
        x = image_to_tensor(image).to(self.device)
        y = tiled_apply(self.network, x, scale=self.scale, tile=tile if self.tileable else 0,
                        overlap=overlap)
        return tensor_to_image(y)

    def release(self) -> None:
        """Nothing to free beyond the reference (the remote kind frees its worker's copy)."""
