"""DeepDanbooru's tagger network ("resnet_custom_v3"), with the parameter names of the
TorchDeepDanbooru port that A1111 loads from `model-resnet_custom_v3.pt`.

The network is a bottleneck ResNet over a 512x512 RGB picture, channels last, in [0, 1].
It ends in a 1x1 convolution to one logit per tag, a global average and a sigmoid, so
the output is one probability per tag. The port is a flat list of convolutions named
`n_Conv_0` ... `n_Conv_178`, numbered in the order the original graph ran them; we
build the same list from the stage table below so that the real file loads by name.

TensorFlow's "same" padding is kept exactly: the stem pads 2 before and 3 after, the
max pool pads 1 after (with -inf), a stride-2 3x3 convolution pads 1 after only and a
stride-1 one pads 1 on each side; the convolutions themselves pad nothing.

Stages (bottleneck width, blocks, stride), each block 1x1 -> 3x3 -> 1x1 with a residual
and four times the width out; the first block of a stage has a 1x1 projection shortcut
(its stride on the projection and on the 3x3). In the fourth stage the projection was
numbered after the first block's three convolutions, so its index comes later.
`base` scales every width (64 in the real file): a scaled-down network keeps the names
and the block counts, only the channel counts shrink.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# (width multiple of `base`, blocks, stride, projection numbered after the first block)
STAGES: tuple[tuple[int, int, int, bool], ...] = (
    (1, 3, 1, False), (2, 8, 2, False), (4, 20, 2, False), (4, 20, 2, True),
    (8, 3, 2, False), (16, 3, 2, False))
REAL_BASE = 64
REAL_TAG_COUNT = 9176
IMAGE_SIZE = 512


@dataclass(frozen=True)
class Block:
    """Indices of one bottleneck's convolutions; `shortcut` is None for the identity."""

    reduce: int
    spatial: int
    expand: int
    shortcut: int | None
    stride: int


def block_plan() -> tuple[list[Block], int]:
    """Every block's convolution indices in the port's numbering, and the head's index."""
    blocks, index = [], 1
    for _, count, stride, late_projection in STAGES:
        for number in range(count):
            first = number == 0
            if first and not late_projection:
                shortcut, index = index, index + 1
            else:
                shortcut = None
            reduce, spatial, expand = index, index + 1, index + 2
            index += 3
            if first and late_projection:
                shortcut, index = index, index + 1
            blocks.append(Block(reduce, spatial, expand, shortcut, stride if first else 1))
    return blocks, index


def conv_shapes(base: int, tags: int) -> dict[int, tuple[int, int, int, int]]:
    """(in, out, kernel, stride) of every `n_Conv_<i>` for a network of width `base`."""
    shapes = {0: (3, base, 7, 2)}
    blocks, head = block_plan()
    channels, position = base, 0
    for multiple, count, _, _ in STAGES:
        width = base * multiple
        for block in blocks[position:position + count]:
            shapes[block.reduce] = (channels, width, 1, 1)
            shapes[block.spatial] = (width, width, 3, block.stride)
            shapes[block.expand] = (width, 4 * width, 1, 1)
            if block.shortcut is not None:
                shapes[block.shortcut] = (channels, 4 * width, 1, block.stride)
            channels = 4 * width
        position += count
    shapes[head] = (channels, tags, 1, 1)
    return shapes


class DeepDanbooruNet(nn.Module):
    """Tag probabilities `[batch, tags]` for pictures `[batch, 512, 512, 3]` in [0, 1]."""

    def __init__(self, base: int = REAL_BASE, tags: int = REAL_TAG_COUNT) -> None:
        super().__init__()
        self.blocks, self.head = block_plan()
        for index, (cin, cout, kernel, stride) in conv_shapes(base, tags).items():
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, bias=index != self.head)
            setattr(self, f"n_Conv_{index}", conv)

    def conv(self, index: int) -> nn.Conv2d:
        return getattr(self, f"n_Conv_{index}")

    def forward(self, pictures: torch.Tensor) -> torch.Tensor:
        x = pictures.permute(0, 3, 1, 2)
        x = F.relu(self.conv(0)(F.pad(x, [2, 3, 2, 3])))
        x = F.max_pool2d(F.pad(x, [0, 1, 0, 1], value=float("-inf")), 3, stride=2)
        for block in self.blocks:
            x = self.bottleneck(block, x)
        logits = self.conv(self.head)(x)
        return torch.sigmoid(logits.mean(dim=(2, 3)))

    def bottleneck(self, block: Block, x: torch.Tensor) -> torch.Tensor:
        """1x1 -> 3x3 (TensorFlow "same" padding) -> 1x1, plus the shortcut, then ReLU."""
        shortcut = x if block.shortcut is None else self.conv(block.shortcut)(x)
        y = F.relu(self.conv(block.reduce)(x))
        pad = [0, 1, 0, 1] if block.stride == 2 else [1, 1, 1, 1]
        y = F.relu(self.conv(block.spatial)(F.pad(y, pad)))
        return F.relu(self.conv(block.expand)(y) + shortcut)


def dimensions_of(state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(base width, tag count) read from a state dict's stem and head weights."""
    _, head = block_plan()
    return state["n_Conv_0.weight"].shape[0], state[f"n_Conv_{head}.weight"].shape[0]
