"""Per-call changes to how the U-Net computes: the hook points of the guidance tools.

FreeU, Kohya Deep Shrink, HyperTile, Self-Attention Guidance and Perturbed-Attention
Guidance each change one U-Net call in a small, local way: scale the decoder's features
or filter its skip connections, shrink the feature map at one depth, split the
self-attention into tiles, read or replace the self-attention of some blocks. None of
them may touch the loaded model (another job shares it), so the U-Net takes them as an
argument of the call, `UNetModel.forward(..., patches=UNetPatches(...))`, and calls them
at four documented points:

* `after_input_block(h, place)`: the output of encoder block `place.index`, before it is
  kept as a skip connection (what the decoder will concatenate);
* `after_skip(h, place)`: the same output after the skip was kept: only the tensor that
  flows on down the encoder changes;
* `before_output_block(h, skip, place)`: decoder block `place.index`'s two inputs, the
  backbone features `h` and the skip connection, just before they are concatenated;
* `self_attention(q, k, v, place, attend)`: the self-attention (`attn1`) of one
  transformer block, with q, k, v shaped (batch, heads, tokens, head_dim) and `attend`
  the layer's own kernel; a patch returns the attention output in the same shape.
* `cross_attention(q, out, place)`: the cross-attention (`attn2`) of one transformer
  block, with `q` its queries and `out` its kernel's output over the text context, both
  (batch, heads, tokens, head_dim), before the heads are merged and `to_out` projects
  them; a patch returns a new `out` (IP-Adapter adds the attention to image tokens).
  Only patches whose class overrides it are called, so the others cost nothing there.

Patches are chained in order: each sees what the previous one returned, and for
`self_attention` each wraps the next (the last one wraps the kernel). A patch that the
CFG step narrows to some rows (`for_rows`, see `modules.sampling.cfg`) gets the indices
of those rows among the step's rows, so a patch that records something per row (SAG's
attention map) knows whose it is.

`AttentionPlace.depth` numbers the resolution levels that have attention from the
finest (0) down; the middle block is one deeper than the deepest such level. This is
the depth A1111's HyperTile options count (SD1: levels 0, 1, 2 and the middle block 3;
SDXL: 0, 1 and the middle block 2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

Stage = Literal["input", "middle", "output"]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockPlace:
    """One block of the U-Net: its stage, its index there, and its resolution level.

    `level` counts the downsamplings before the block (0 = the latent's own size);
    `depth` is its attention depth (module docstring), or None for a block without
    attention (the input convolution, downsampling blocks, levels without attention).
    """

    stage: Stage
    index: int
    level: int
    depth: int | None


@dataclass(frozen=True)
class AttentionPlace:
    """One transformer block's attention layer (`attn1` or `attn2`): its U-Net block,
    which transformer block there, and the token map size."""

    block: BlockPlace
    transformer: int
    height: int
    width: int

    @property
    def depth(self) -> int | None:
        return self.block.depth


class UNetPatch:
    """Base class: every hook leaves the call unchanged; subclasses override what they change."""

    def for_rows(self, rows: list[int]) -> UNetPatch:
        """This patch for a U-Net call over some of the CFG step's rows (default: itself)."""
        return self

    def for_tiles(self, views: list) -> UNetPatch:
        """This patch for a Tiled Diffusion step, whose "images" are tiles
        (`modules.sampling.tiled_diffusion.TileView`s): a patch holding maps of the whole
        latent crops them to each tile (default: itself, nothing positional)."""
        return self

    def after_input_block(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        return h

    def after_skip(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        return h

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor,
                            place: BlockPlace) -> tuple[torch.Tensor, torch.Tensor]:
        return h, skip

    def changes_self_attention(self, place: AttentionPlace) -> bool:
        """Whether `self_attention` does anything at this layer (lets others keep the fast path)."""
        return False

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       place: AttentionPlace, attend: Attend) -> torch.Tensor:
        return attend(q, k, v)

    def changes_cross_attention(self, place: AttentionPlace) -> bool:
        """Whether `cross_attention` does anything at this layer: by default, whether the
        class overrides it (patches that don't are never called there)."""
        return type(self).cross_attention is not UNetPatch.cross_attention

    def cross_attention(self, q: torch.Tensor, out: torch.Tensor,
                        place: AttentionPlace) -> torch.Tensor:
        return out


@dataclass(frozen=True)
class UNetPatches:
    """The patches of one U-Net call, applied in order (module docstring)."""

    patches: tuple[UNetPatch, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.patches)

    def plus(self, *more: UNetPatch) -> UNetPatches:
        """These patches followed by `more` (a new value: patches are shared by rows)."""
        return UNetPatches((*self.patches, *more))

    def for_rows(self, rows: list[int]) -> UNetPatches:
        return UNetPatches(tuple(patch.for_rows(rows) for patch in self.patches))

    def for_tiles(self, views: list) -> UNetPatches:
        return UNetPatches(tuple(patch.for_tiles(views) for patch in self.patches))

    def after_input_block(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        for patch in self.patches:
            h = patch.after_input_block(h, place)
        return h

    def after_skip(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        for patch in self.patches:
            h = patch.after_skip(h, place)
        return h

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor,
                            place: BlockPlace) -> tuple[torch.Tensor, torch.Tensor]:
        for patch in self.patches:
            h, skip = patch.before_output_block(h, skip, place)
        return h, skip

    def self_attention_at(self, place: AttentionPlace) -> SelfAttention | None:
        """The chained self-attention of one layer, or None where no patch changes it."""
        active = tuple(p for p in self.patches if p.changes_self_attention(place))
        return SelfAttention(active, place) if active else None

    def cross_attention_at(self, place: AttentionPlace) -> CrossAttentionPatches | None:
        """The chained cross-attention changes of one layer, or None where no patch has any."""
        active = tuple(p for p in self.patches if p.changes_cross_attention(place))
        return CrossAttentionPatches(active, place) if active else None


def with_patch(existing: UNetPatches | None, patch: UNetPatch) -> UNetPatches:
    """`existing` (a step's `unet_kwargs["patches"]`, maybe absent) plus one more patch."""
    return (existing or UNetPatches()).plus(patch)


@dataclass(frozen=True)
class SelfAttention:
    """Self-attention of one layer through a chain of patches around the layer's kernel."""

    patches: tuple[UNetPatch, ...]
    place: AttentionPlace

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 kernel: Attend) -> torch.Tensor:
        attend = kernel
        for patch in reversed(self.patches):
            attend = _wrapped(patch, self.place, attend)
        return attend(q, k, v)


@dataclass(frozen=True)
class CrossAttentionPatches:
    """The patches that change one `attn2` layer's output, applied in order."""

    patches: tuple[UNetPatch, ...]
    place: AttentionPlace

    def __call__(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        for patch in self.patches:
            out = patch.cross_attention(q, out, self.place)
        return out


def _wrapped(patch: UNetPatch, place: AttentionPlace, inner: Attend) -> Attend:
    return lambda q, k, v: patch.self_attention(q, k, v, place, inner)


def block_places(*, transformer_depth: tuple[int, ...], num_res_blocks: int
                 ) -> tuple[list[BlockPlace], BlockPlace, list[BlockPlace]]:
    """The places of the encoder blocks, the middle block and the decoder blocks.

    Encoder: the input convolution, then per level `num_res_blocks` blocks and (but for
    the last level) a downsampling block that already works at the next level's size.
    Decoder: per level from the deepest, `num_res_blocks + 1` blocks at that level.
    """
    levels = len(transformer_depth)
    with_attention = [level for level in range(levels) if transformer_depth[level] > 0]
    first = with_attention[0] if with_attention else 0

    def depth(level: int) -> int | None:
        return level - first if transformer_depth[level] > 0 else None

    inputs = [BlockPlace("input", 0, 0, None)]  # the input convolution
    for level in range(levels):
        for _ in range(num_res_blocks):
            inputs.append(BlockPlace("input", len(inputs), level, depth(level)))
        if level < levels - 1:
            inputs.append(BlockPlace("input", len(inputs), level + 1, None))
    middle_depth = (with_attention[-1] - first + 1) if with_attention else None
    middle = BlockPlace("middle", 0, levels - 1, middle_depth)
    outputs = [BlockPlace("output", level_index * (num_res_blocks + 1) + i, level, depth(level))
               for level_index, level in enumerate(reversed(range(levels)))
               for i in range(num_res_blocks + 1)]
    return inputs, middle, outputs
