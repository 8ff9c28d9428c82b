"""Token merging (ToMe) for the U-Net's self-attention.

Bolya & Hoffman (2023), "Token Merging for Fast Stable Diffusion"
(https://arxiv.org/abs/2303.17604), after Bolya et al. (2023), "Token Merging: Your ViT
But Faster". Neighbouring pixels of a latent are often nearly the same token, so before
self-attention the most redundant `ratio` of the tokens are averaged into similar ones
(bipartite soft matching), attention runs on fewer tokens, and its output is copied
back to every original position ("unmerge"). Attention cost falls roughly with the
square of the kept share.

As A1111 applies it (through the `tomesd` package, whose algorithm this follows; the
code here is Easel's own): only self-attention is merged (not cross-attention or the
MLP), only in transformers at the latent's full resolution (`max_downsample` 1), with
one destination token per 2x2 cell of the map, taken at the cell's top-left corner
rather than at random, so the result does not depend on any RNG state.

`TokenMerging` is a per-call argument of `UNetModel.forward` (requests never change the
shared model); the ratio is written to the infotext as `Token merging ratio`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class TokenMerging:
    """How much to merge: `ratio` of the tokens of each full-resolution self-attention.

    :param ratio: share of tokens merged away, in [0, 1); 0 turns merging off
    :param latent_tokens: H * W of the U-Net input (to recognise the full resolution)
    :param max_downsample: merge in transformers at most this many times downsampled
    :param stride: cell size (sx = sy) holding one destination token
    """

    ratio: float
    latent_tokens: int
    max_downsample: int = 1
    stride: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"token merging ratio must be in [0, 1), got {self.ratio}")

    def for_map(self, height: int, width: int) -> "MapMerging | None":
        """The merging for a transformer over a height x width map, or None there."""
        if self.ratio <= 0.0:
            return None
        downsample = math.ceil(math.sqrt(self.latent_tokens / (height * width)))
        if downsample > self.max_downsample:
            return None
        return MapMerging(ratio=self.ratio, height=height, width=width, stride=self.stride)


@dataclass(frozen=True, kw_only=True)
class MapMerging:
    """Token merging for one map size; `plan(x)` matches the tokens of one block input."""

    ratio: float
    height: int
    width: int
    stride: int

    def plan(self, metric: torch.Tensor) -> "MergePlan":
        """Match each source token to its most similar destination; merge the top `ratio`."""
        dst_pos, src_pos = _destinations(self.height, self.width, self.stride, metric.device)
        merged = min(int(metric.shape[1] * self.ratio), src_pos.numel())
        unit = metric / metric.norm(dim=-1, keepdim=True)
        scores = unit[:, src_pos] @ unit[:, dst_pos].transpose(-1, -2)
        best_score, best_dst = scores.max(dim=-1)
        # Sources most similar to some destination are merged; the rest are kept.
        order = best_score.argsort(dim=-1, descending=True)
        return MergePlan(dst_pos=dst_pos, src_pos=src_pos, merged_src=order[:, :merged],
                         kept_src=order[:, merged:],
                         target=best_dst.gather(-1, order[:, :merged]))


def _destinations(height: int, width: int, stride: int,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions of the destinations (top-left of each full cell) and the sources."""
    is_dst = torch.zeros(height, width, dtype=torch.bool, device=device)
    is_dst[: height - height % stride: stride, : width - width % stride: stride] = True
    flat = is_dst.flatten()
    return flat.nonzero().squeeze(1), (~flat).nonzero().squeeze(1)


@dataclass(frozen=True, kw_only=True)
class MergePlan:
    """Index tensors of one merge: (B, n) positions into the source / destination sets."""

    dst_pos: torch.Tensor
    src_pos: torch.Tensor
    merged_src: torch.Tensor
    kept_src: torch.Tensor
    target: torch.Tensor

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, kept + destinations, C): merged sources averaged into targets."""
        channels = x.shape[-1]
        src, dst = x[:, self.src_pos], x[:, self.dst_pos]
        kept = src.gather(1, _expand(self.kept_src, channels))
        moving = src.gather(1, _expand(self.merged_src, channels))
        dst = dst.scatter_reduce(1, _expand(self.target, channels), moving, reduce="mean",
                                 include_self=True)
        return torch.cat([kept, dst], dim=1)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        """(B, kept + destinations, C) -> (B, N, C): every token gets its group's output."""
        batch, _, channels = y.shape
        n_kept = self.kept_src.shape[1]
        kept, dst = y[:, :n_kept], y[:, n_kept:]
        src = y.new_empty(batch, self.src_pos.numel(), channels)
        src.scatter_(1, _expand(self.kept_src, channels), kept)
        src.scatter_(1, _expand(self.merged_src, channels),
                     dst.gather(1, _expand(self.target, channels)))
        out = y.new_empty(batch, self.src_pos.numel() + self.dst_pos.numel(), channels)
        out[:, self.src_pos] = src
        out[:, self.dst_pos] = dst
        return out


def _expand(index: torch.Tensor, channels: int) -> torch.Tensor:
    return index.unsqueeze(-1).expand(-1, -1, channels)
