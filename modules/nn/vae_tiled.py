"""Tiled VAE encode and decode with GroupNorm statistics shared by every tile.

Decoding a 2048x2048 image with the SD VAE needs several 128-channel float tensors of
the full image size at once (~3.9 GB at 1024² in fp32: docs/perf-reference.md, "VAE decode memory").
Cutting the image into tiles bounds that, but each GroupNorm (Wu & He, 2018, "Group
Normalization") would then normalise with its own tile's mean and variance, and the
tiles come out with different brightness and colour: visible seams.

The approach here follows the "Tiled VAE" extension's idea (docs/model-formats.md, "Tiled VAE"):
every tile is normalised with the statistics of the *whole* image, so all tiles see the same
affine map at every GroupNorm and only the receptive field is cut. How:

1. The part of the network that runs at latent resolution and holds the one global
   attention layer (the decoder's `conv_in` + `mid`, the encoder's `mid` + `norm_out` +
   `conv_out`) runs on the whole latent: it is small (512 channels at H/8 x W/8) and
   attention stays global, exactly as untiled. The attention there runs with query
   slicing (`sliced_attention`), so a 2048² image's 65,536 x 65,536 score matrix is
   never held at once.
2. Statistics estimate: the high-resolution part (decoder `up` levels, encoder `down`
   levels) runs once on a copy of its input shrunk to about one tile (area
   interpolation, each channel's mean and standard deviation restored), recording
   every GroupNorm's per-group mean and variance.
3. Refinement (`refine` passes): every tile runs with those statistics while the
   statistics of its core region (without the overlap) are accumulated; the sums over
   all tiles give the whole-image statistics under the current estimate.
4. Every tile runs with the final statistics; its core region is written out. The
   overlap (context on each side) covers the receptive field of the convolutions.

The staged forward below restates the decoder/encoder forward passes with a
`norm` argument that decides how each GroupNorm gets its statistics; weights are the
model's own modules, nothing is patched. `modules/nn` knows nothing of settings:
tile sizes and when to tile are the caller's choice (`modules/pipeline/vae_codec.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import Cancel, check, sliced_attention
from modules.nn.autoencoder import AutoencoderKL, Decoder, DiagonalGaussian, Encoder
from modules.nn.vae_blocks import AttnBlock, MidBlock, ResnetBlock

ATTENTION_SLICE_BYTES = 64 * 1024 * 1024

NormFn = Callable[[nn.GroupNorm, torch.Tensor], torch.Tensor]
Box = tuple[int, int, int, int]  # y0, y1, x0, x1


def group_moments(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (batch, group) mean and (biased) variance of `x`, computed in float32."""
    grouped = x.reshape(x.shape[0], groups, -1).float()
    var, mean = torch.var_mean(grouped, dim=2, unbiased=False)
    return mean, var


def normalize_with(norm: nn.GroupNorm, x: torch.Tensor, mean: torch.Tensor,
                   var: torch.Tensor) -> torch.Tensor:
    """`norm(x)` with the given per (batch, group) statistics instead of x's own.

    With the statistics fixed, GroupNorm is a per-channel affine map, which is what
    inference-mode batch norm computes: one fused pass over `x` in its own dtype
    (float32 arithmetic inside), with no float copy of a large activation.
    """
    batch, channels = x.shape[:2]
    per_group = channels // norm.num_groups
    mean_c = mean.repeat_interleave(per_group, dim=1).reshape(-1)
    var_c = var.repeat_interleave(per_group, dim=1).reshape(-1)
    weight = norm.weight.float().repeat(batch) if norm.affine else None
    bias = norm.bias.float().repeat(batch) if norm.affine else None
    flat = x.reshape(1, batch * channels, *x.shape[2:])
    out = F.batch_norm(flat, mean_c, var_c, weight, bias, training=False, eps=norm.eps)
    return out.reshape(x.shape)


@dataclass
class GroupStats:
    """Statistics of one GroupNorm's input summed over tiles: count, sum, sum of squares
    per (batch, group), in float64 (each tile's part comes as a float32 mean/var)."""

    total: torch.Tensor
    squares: torch.Tensor
    count: int = 0

    def add(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        mean, var = mean.to(self.total.dtype), var.to(self.total.dtype)
        self.total += mean * count
        self.squares += (var + mean**2) * count
        self.count += count

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.total / self.count
        var = (self.squares / self.count - mean**2).clamp_min(0)
        return mean.float(), var.float()


@dataclass
class SharedNorm:
    """Applies GroupNorm with given statistics, or records / accumulates them.

    `mode` "record": compute each call's statistics from its input and keep them.
    "apply": use `stats[i]` for the i-th GroupNorm call of the pass. "measure": apply
    as well, and accumulate statistics over `core` (the tile without its overlap).
    """

    mode: Literal["record", "apply", "measure"]
    stats: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    sums: list[GroupStats] = field(default_factory=list)
    core: Box | None = None
    input_height: int = 1
    index: int = 0

    def start_tile(self, core: Box | None, input_height: int) -> None:
        self.core, self.input_height, self.index = core, input_height, 0

    def __call__(self, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.stats.append(group_moments(x, norm.num_groups))
        elif self.mode == "measure":
            self._accumulate(x, norm.num_groups)
        mean, var = self.stats[self.index]
        self.index += 1
        return normalize_with(norm, x, mean, var)

    def _accumulate(self, x: torch.Tensor, groups: int) -> None:
        factor = x.shape[-2] / self.input_height
        y0, y1, x0, x1 = (round(v * factor) for v in self.core)
        region = x[..., y0:y1, x0:x1]
        if len(self.sums) <= self.index:
            # float64 where the device has it (MPS does not: float32 there).
            dtype = torch.float32 if x.device.type == "mps" else torch.float64
            zeros = torch.zeros(x.shape[0], groups, dtype=dtype, device=x.device)
            self.sums.append(GroupStats(total=zeros, squares=zeros.clone()))
        mean, var = group_moments(region, groups)
        self.sums[self.index].add(mean, var, region[0].numel() // groups)

    def measured(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [sums.mean_var() for sums in self.sums]


# ---------------------------------------------------------------- staged forward


def resnet_forward(block: ResnetBlock, x: torch.Tensor, norm: NormFn) -> torch.Tensor:
    """`ResnetBlock.forward` with the GroupNorms given by `norm`.

    `norm` returns a new tensor, so SiLU runs in place on it: one activation-sized
    buffer fewer at the peak, which at full resolution is the largest one.
    """
    h = block.conv1(F.silu(norm(block.norm1, x), inplace=True))
    h = block.conv2(F.silu(norm(block.norm2, h), inplace=True))
    h += block.nin_shortcut(x)
    return h


def attention_forward(block: AttnBlock, x: torch.Tensor,
                      cancel: Cancel | None = None) -> torch.Tensor:
    """`AttnBlock.forward` with query-sliced attention (bounded memory, same result)."""
    batch, channels, height, width = x.shape
    h = block.norm(x)
    q, k, v = (proj(h).flatten(2).transpose(1, 2).unsqueeze(1)
               for proj in (block.q, block.k, block.v))
    out = sliced_attention(q, k, v, slice_bytes=ATTENTION_SLICE_BYTES, cancel=cancel)
    out = out.squeeze(1).transpose(1, 2).reshape(batch, channels, height, width)
    return x + block.proj_out(out)


def mid_forward(mid: MidBlock, x: torch.Tensor, cancel: Cancel | None = None) -> torch.Tensor:
    return mid.block_2(attention_forward(mid.attn_1, mid.block_1(x), cancel))


def decoder_head(decoder: Decoder, z: torch.Tensor,
                 cancel: Cancel | None = None) -> torch.Tensor:
    """`conv_in` and the mid block (with its global attention), on the whole latent."""
    return mid_forward(decoder.mid, decoder.conv_in(z), cancel)


def decoder_tail(decoder: Decoder, h: torch.Tensor, norm: NormFn) -> torch.Tensor:
    """The `up` levels, `norm_out` and `conv_out`: the high-resolution part."""
    for level in reversed(decoder.up):
        for block in level.block:
            h = resnet_forward(block, h, norm)
        if level.upsample is not None:
            h = level.upsample(h)
    return decoder.conv_out(F.silu(norm(decoder.norm_out, h), inplace=True))


def encoder_head(encoder: Encoder, x: torch.Tensor, norm: NormFn) -> torch.Tensor:
    """`conv_in` and the `down` levels: the high-resolution part."""
    h = encoder.conv_in(x)
    for level in encoder.down:
        for block in level.block:
            h = resnet_forward(block, h, norm)
        if level.downsample is not None:
            h = level.downsample(h)
    return h


def encoder_tail(encoder: Encoder, h: torch.Tensor,
                 cancel: Cancel | None = None) -> torch.Tensor:
    """The mid block, `norm_out` and `conv_out`, on the whole latent."""
    return encoder.conv_out(F.silu(encoder.norm_out(mid_forward(encoder.mid, h, cancel))))


# ---------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """A core box (written out) and the padded box around it (run), in input pixels."""

    core: Box
    padded: Box

    @property
    def core_in_padded(self) -> Box:
        y0, _, x0, _ = self.padded
        return self.core[0] - y0, self.core[1] - y0, self.core[2] - x0, self.core[3] - x0


def _spans(size: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    for start in range(0, size, tile):
        end = min(start + tile, size)
        yield start, end, max(0, start - overlap), min(size, end + overlap)


def tile_grid(height: int, width: int, *, tile: int, overlap: int) -> list[Tile]:
    """Row-major tiles of at most `tile` x `tile` core pixels with `overlap` context."""
    return [Tile(core=(y0, y1, x0, x1), padded=(py0, py1, px0, px1))
            for y0, y1, py0, py1 in _spans(height, tile, overlap)
            for x0, x1, px0, px1 in _spans(width, tile, overlap)]


def _crop(x: torch.Tensor, box: Box, factor: float = 1) -> torch.Tensor:
    y0, y1, x0, x1 = (int(v * factor) for v in box)
    return x[..., y0:y1, x0:x1]


def _shrunk(h: torch.Tensor, size: int) -> torch.Tensor:
    """`h` area-resized so its longer side is `size`, each channel's mean/std restored."""
    scale = size / max(h.shape[-2:])
    if scale >= 1:
        return h
    target = (max(1, round(h.shape[-2] * scale)), max(1, round(h.shape[-1] * scale)))
    small = F.interpolate(h.float(), size=target, mode="area")
    std, mean = torch.std_mean(h.float(), dim=(2, 3), keepdim=True)
    small_std, small_mean = torch.std_mean(small, dim=(2, 3), keepdim=True)
    return ((small - small_mean) / small_std.clamp_min(1e-6) * std + mean).to(h.dtype)


def _estimate(run: Callable[[torch.Tensor, NormFn], torch.Tensor], h: torch.Tensor,
              size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    norm = SharedNorm(mode="record")
    run(_shrunk(h, size), norm)
    return norm.stats


def _refine(run, h: torch.Tensor, tiles: list[Tile], stats, passes: int,
            cancel: Cancel | None = None):
    for _ in range(passes):
        norm = SharedNorm(mode="measure", stats=stats)
        for tile in tiles:
            check(cancel)
            norm.start_tile(tile.core_in_padded, tile.padded[1] - tile.padded[0])
            run(_crop(h, tile.padded), norm)
        stats = norm.measured()
    return stats


def _run_tiles(run, h: torch.Tensor, tiles: list[Tile], stats, out: torch.Tensor,
               factor: float, cancel: Cancel | None = None, origin: int = 0) -> torch.Tensor:
    """Run every tile with `stats`; write each core (less `origin`, scaled by `factor`)
    into `out`."""
    norm = SharedNorm(mode="apply", stats=stats)
    for tile in tiles:
        check(cancel)
        norm.start_tile(None, 1)
        result = run(_crop(h, tile.padded), norm)
        y0, y1, x0, x1 = (int((v - origin) * factor) for v in tile.core)
        out[..., y0:y1, x0:x1] = _crop(result, tile.core_in_padded, factor).to(out.dtype)
    return out


def wrapped_tiles(h: torch.Tensor, *, tile: int, overlap: int
                  ) -> tuple[torch.Tensor, list[Tile], int]:
    """For a picture that wraps around (seamless tiling, `modules/nn/tiling.py`): `h`
    padded circularly by the overlap, and tiles over it whose context beyond the
    picture's border is the opposite border. Every tile then has its full overlap, so
    the picture wraps at its border only, never inside a tile. Returns the padded
    input, the tiles (in padded coordinates) and the padding (the cores' origin)."""
    pad = min(overlap, h.shape[-2], h.shape[-1])  # circular padding is at most one period
    padded = F.pad(h, (pad, pad, pad, pad), mode="circular")
    tiles = [Tile(core=(y0 + pad, y1 + pad, x0 + pad, x1 + pad),
                  padded=(y0, y1 + 2 * pad, x0, x1 + 2 * pad))
             for y0, y1, _, _ in _spans(h.shape[-2], tile, overlap)
             for x0, x1, _, _ in _spans(h.shape[-1], tile, overlap)]
    return padded, tiles, pad


# ---------------------------------------------------------------- public API


@torch.no_grad()
def tiled_decode(vae: AutoencoderKL, z: torch.Tensor, *, tile: int = 64, overlap: int = 16,
                 refine: int = 1, cancel: Cancel | None = None,
                 wrap: bool = False) -> torch.Tensor:
    """Like `vae.decode(z)` (unscaled latent in, image out) in tiles of `tile` latent px;
    `cancel.check()` runs between tiles and attention chunks. `wrap`: the picture wraps
    around (`wrapped_tiles`)."""
    decoder, factor = vae.decoder, vae.config.downscale
    h = decoder_head(decoder, vae.post_quant_conv(z.to(vae.dtype)), cancel)

    def run(x: torch.Tensor, norm: NormFn) -> torch.Tensor:
        return decoder_tail(decoder, x, norm)

    stats = _estimate(run, h, tile + 2 * overlap)
    out = torch.empty(z.shape[0], vae.config.out_channels, h.shape[-2] * factor,
                      h.shape[-1] * factor, dtype=z.dtype, device=z.device)
    if wrap:
        h, tiles, origin = wrapped_tiles(h, tile=tile, overlap=overlap)
    else:
        tiles, origin = tile_grid(h.shape[-2], h.shape[-1], tile=tile, overlap=overlap), 0
    stats = _refine(run, h, tiles, stats, refine, cancel)
    return _run_tiles(run, h, tiles, stats, out, factor, cancel, origin)


@torch.no_grad()
def tiled_encode(vae: AutoencoderKL, x: torch.Tensor, *, tile: int = 512, overlap: int = 64,
                 refine: int = 1, cancel: Cancel | None = None,
                 wrap: bool = False) -> DiagonalGaussian:
    """Like `vae.encode(x)` in tiles of `tile` pixels; sides must divide by the VAE factor.
    `cancel.check()` runs between tiles and attention chunks. `wrap`: the picture wraps
    around (`wrapped_tiles`)."""
    encoder, factor = vae.encoder, vae.config.downscale
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"tiled_encode: image sides must be multiples of {factor}, "
                         f"got {tuple(x.shape[-2:])}")
    tile, overlap = max(factor, tile // factor * factor), overlap // factor * factor
    pixels = x.to(vae.dtype)

    def run(part: torch.Tensor, norm: NormFn) -> torch.Tensor:
        return encoder_head(encoder, part, norm)

    check(cancel)
    stats = _estimate(run, pixels, tile + 2 * overlap)
    width = encoder.conv_out.in_channels
    h = torch.empty(x.shape[0], width, x.shape[-2] // factor, x.shape[-1] // factor,
                    dtype=vae.dtype, device=x.device)
    if wrap:  # the padding stays a multiple of the factor: tiles keep the latent grid
        pad = min(overlap, *x.shape[-2:]) // factor * factor
        pixels, tiles, origin = wrapped_tiles(pixels, tile=tile, overlap=pad)
    else:
        tiles, origin = tile_grid(x.shape[-2], x.shape[-1], tile=tile, overlap=overlap), 0
    stats = _refine(run, pixels, tiles, stats, refine, cancel)
    h = _run_tiles(run, pixels, tiles, stats, h, 1 / factor, cancel, origin)
    check(cancel)
    moments = vae.quant_conv(encoder_tail(encoder, h, cancel))
    return DiagonalGaussian(moments.to(x.dtype))
