"""HyperTile: self-attention within tiles of the token map (A1111 1.10's built-in option,
after tfernd's HyperTile), written from its published description.

Self-attention over an h x w token map costs (h w)^2; split into nh x nw tiles it costs
(h w)^2 / (nh nw), and at large sizes the picture barely changes because most attention
is local. Tokens are regrouped tile by tile, (B, heads, h*w, d) ->
(B*nh*nw, heads, (h/nh)*(w/nw), d) for q, k and v, attended per tile with the layer's
own kernel, and put back in place.

Tile counts, per axis of length n (A1111's rule): the smallest tile side allowed is
min_side = max(128, max_tile) // 8 * 2^depth tokens (capped at n): the option counts
pixels, 8 per latent token, and deeper layers keep proportionally larger tiles. Among
the divisors t of n with t >= min_side, the first `swap_size` (smallest tiles first)
are candidates, and each attention call picks one at random, n // t tiles, from the
job's own seeded `random.Random` (different tilings from step to step hide the seams).
A layer whose map fits in one tile, a map ToMe merged (token count != h*w) or another
patch changed, and layers deeper than `max_depth` run unchanged.

The VAE option tiles the decoder's middle attention block (norm and attention, on the
(B, C, h, w) map) the same way, with min_side = max(128, max_tile) // 8 and no depth
factor (its only attention sits at the latent's own size).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modules.nn.unet_patches import Attend, AttentionPlace, UNetPatch


@dataclass(frozen=True)
class TileOptions:
    """One HyperTile option set (A1111's max depth, max tile size in pixels, swap size)."""

    max_depth: int = 3
    max_tile: int = 256
    swap_size: int = 3


def min_tile_side(max_tile: int, depth: int) -> int:
    """The smallest tile side in tokens at an attention depth (module docstring)."""
    return max(128, max_tile) // 8 * 2 ** depth


def tile_candidates(n: int, min_side: int, swap_size: int) -> list[int]:
    """Tile counts along an axis of `n` tokens: n // t for the first `swap_size` divisors
    t >= min(min_side, n) of n, smallest tiles (most tiles) first."""
    low = min(min_side, n)
    sides = [t for t in range(low, n + 1) if n % t == 0]
    return [n // t for t in sides[:max(1, swap_size)]]


def pick_tiles(n: int, min_side: int, swap_size: int, rng: random.Random) -> int:
    """One tile count for an axis; the RNG is drawn only where there is a choice."""
    options = tile_candidates(n, min_side, swap_size)
    return options[rng.randint(0, len(options) - 1)] if len(options) > 1 else options[0]


def to_tiles(t: torch.Tensor, h: int, w: int, nh: int, nw: int) -> torch.Tensor:
    """(B, heads, h*w, d) -> (B*nh*nw, heads, (h/nh)*(w/nw), d), tiles in row-major order."""
    b, heads, _, d = t.shape
    tiled = t.reshape(b, heads, nh, h // nh, nw, w // nw, d).permute(0, 2, 4, 1, 3, 5, 6)
    return tiled.reshape(b * nh * nw, heads, (h // nh) * (w // nw), d)


def from_tiles(t: torch.Tensor, h: int, w: int, nh: int, nw: int) -> torch.Tensor:
    """The inverse of `to_tiles`."""
    tiles, heads, _, d = t.shape
    b = tiles // (nh * nw)
    grid = t.reshape(b, nh, nw, heads, h // nh, w // nw, d).permute(0, 3, 1, 4, 2, 5, 6)
    return grid.reshape(b, heads, h * w, d)


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, h: int, w: int,
                    nh: int, nw: int, attend: Attend) -> torch.Tensor:
    """Self-attention of an h x w token map within nh x nw tiles."""
    if nh * nw == 1:
        return attend(q, k, v)
    out = attend(to_tiles(q, h, w, nh, nw), to_tiles(k, h, w, nh, nw),
                 to_tiles(v, h, w, nh, nw))
    return from_tiles(out, h, w, nh, nw)


class HyperTileUNet(UNetPatch):
    """The U-Net option as a patch; one per sampling pass, with that job's seeded RNG."""

    def __init__(self, options: TileOptions, rng: random.Random) -> None:
        self.options, self.rng = options, rng

    def changes_self_attention(self, place: AttentionPlace) -> bool:
        return place.depth is not None and place.depth <= self.options.max_depth

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       place: AttentionPlace, attend: Attend) -> torch.Tensor:
        h, w = place.height, place.width
        if not q.shape[2] == k.shape[2] == v.shape[2] == h * w:  # ToMe or another patch
            return attend(q, k, v)
        side = min_tile_side(self.options.max_tile, place.depth or 0)
        nh = pick_tiles(h, side, self.options.swap_size, self.rng)
        nw = pick_tiles(w, side, self.options.swap_size, self.rng)
        return tiled_attention(q, k, v, h, w, nh, nw, attend)


MapLayer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class HyperTileVAE:
    """The VAE option: `around(layer, x)` runs a (B, C, h, w) -> same layer per tile."""

    options: TileOptions
    rng: random.Random

    def around(self, layer: MapLayer, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        side = min_tile_side(self.options.max_tile, 0)
        nh = pick_tiles(h, side, self.options.swap_size, self.rng)
        nw = pick_tiles(w, side, self.options.swap_size, self.rng)
        if nh * nw == 1:
            return layer(x)
        th, tw = h // nh, w // nw
        tiles = x.reshape(b, c, nh, th, nw, tw).permute(0, 2, 4, 1, 3, 5)
        out = layer(tiles.reshape(b * nh * nw, c, th, tw))
        out = out.reshape(b, nh, nw, c, th, tw).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, c, h, w)
