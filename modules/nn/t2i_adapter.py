"""T2I-Adapter: a small convolutional encoder whose features steer a frozen U-Net.

Mou et al. (2023), "T2I-Adapter: Learning Adapters to Dig out More Controllable Ability
for Text-to-Image Diffusion Models" (https://arxiv.org/abs/2302.08453). A condition
image c (sketch, depth, pose, colour palette, ... in [0, 1] at pixel size) is folded
into channels by a pixel unshuffle, then a stack of residual blocks makes one feature
map per U-Net resolution level. Unlike a ControlNet the adapter never sees the noisy
latent or the timestep, so its features are computed once per image and size and added,
times the unit's weight, to the U-Net encoder's features at every step
(`T2IAdapterPatch`).

Layouts, with TencentARC's attribute names (`ldm/modules/encoders/adapter.py`), so that
their `.pth` files (`t2iadapter_*_sd14v1.pth`, `coadapter-*-sd15v1.pth`) load by name;
diffusers' `T2IAdapter` files (`adapter.body.N.resnets.M...`) are renamed by
`modules.models.t2i_adapter_files`:

* "full" (`Adapter`, SD1): `conv_in`, then `body.N` = `num_res_blocks` residual blocks
  per level, flat; the first block of every level but the first halves the map and
  (when the width changes) has an `in_conv`. Unshuffle by 8: feature i is at 1/2^i of
  the latent size.
* "full_xl" (diffusers `FullAdapterXL`, `t2i-adapter-*-sdxl-1.0`): the same blocks,
  unshuffle by 16 and only level 2 halves the map: features at 1/2, 1/2, 1/4, 1/4 of
  the latent, SDXL's encoder sizes (the fourth goes to the middle block).
* "light" (`Adapter_light`, `t2iadapter_color_sd14v1`): per level one `extractor`:
  1x1 `in_conv` to a quarter of the width, `body.M` residual blocks, 1x1 `out_conv`.
* "style" (`StyleAdapter`, `t2iadapter_style_sd14v1`, `coadapter-style-sd15v1`): a
  3-layer transformer over CLIP ViT-L/14 vision hidden states plus learnt queries;
  its `num_tokens` outputs are appended to the text context as extra tokens.

Downsampling by average pooling uses `ceil_mode` as diffusers does, so odd map sizes
halve like the U-Net's strided convolutions (TencentARC's floor mode differs only there).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.configs import UNetConfig
from modules.nn.unet_patches import BlockPlace, UNetPatch

AdapterKind = Literal["full", "full_xl", "light", "style"]


@dataclass(frozen=True, kw_only=True)
class T2IAdapterConfig:
    """The shape of one T2I-Adapter.

    Spatial kinds ("full", "full_xl", "light"): `hint_channels` of the condition image
    (3, or 1 for sketch / canny), `channels` the width of each feature (one per level),
    `num_res_blocks` residual blocks per level, `downscale` the pixel unshuffle factor.
    TencentARC's `Adapter` options: `kernel_size` of `in_conv` and `block2` (1 in every
    released file), `skip_conv` (`sk=False`: an `in_conv` in every block and a `skep`
    convolution on the residual path) and `conv_down` (a strided 3x3 `down_opt.op`
    instead of average pooling).
    "style": `width` of the CLIP vision hidden states, `context_dim` of the text context,
    `num_heads`, `num_layers` and `num_tokens` (the extra context tokens).
    """

    kind: AdapterKind
    hint_channels: int = 3
    channels: tuple[int, ...] = (320, 640, 1280, 1280)
    num_res_blocks: int = 2
    downscale: int = 8
    kernel_size: int = 1
    skip_conv: bool = False
    conv_down: bool = False
    width: int = 1024
    context_dim: int = 768
    num_heads: int = 8
    num_layers: int = 3
    num_tokens: int = 8

    def downsamples(self, level: int) -> bool:
        """Whether the first block of `level` halves the feature map."""
        if self.kind == "full_xl":
            return level == 2
        return level > 0

    def feature_downscale(self, level: int) -> int:
        """Pixel size / size of feature `level` (8 = the latent's own size)."""
        return self.downscale * 2 ** sum(self.downsamples(i) for i in range(level + 1))


class _Downsample(nn.Module):
    """TencentARC's `Downsample`: average pooling, or a strided 3x3 conv (`op`)."""

    def __init__(self, *, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.op = (nn.Conv2d(channels, channels, 3, stride=2, padding=1) if use_conv
                   else nn.AvgPool2d(kernel_size=2, stride=2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class AdapterResBlock(nn.Module):
    """One residual block of the full adapter (TencentARC `ResnetBlock`):
    [down] -> [in_conv] -> x + block2(relu(block1(x))) (or + skep(x))."""

    def __init__(self, *, in_channels: int, out_channels: int, down: bool,
                 config: T2IAdapterConfig) -> None:
        super().__init__()
        k = config.kernel_size
        # Halve the map first (the first block of a deeper level).
        if down:
            self.down_opt = _Downsample(channels=in_channels, use_conv=config.conv_down)
        # A width change (or TencentARC's sk=False) projects the input first.
        if in_channels != out_channels or config.skip_conv:
            self.in_conv = nn.Conv2d(in_channels, out_channels, k, padding=k // 2)
        self.block1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.block2 = nn.Conv2d(out_channels, out_channels, k, padding=k // 2)
        if config.skip_conv:
            self.skep = nn.Conv2d(out_channels, out_channels, k, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "down_opt"):
            x = self.down_opt(x)
        if hasattr(self, "in_conv"):
            x = self.in_conv(x)
        h = self.block2(F.relu(self.block1(x)))
        return h + (self.skep(x) if hasattr(self, "skep") else x)


class LightResBlock(nn.Module):
    """The light adapter's residual block (TencentARC `ResnetBlock_light`): two 3x3 convs."""

    def __init__(self, *, channels: int) -> None:
        super().__init__()
        self.block1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.block2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block2(F.relu(self.block1(x)))


class LightExtractor(nn.Module):
    """One level of the light adapter (TencentARC `extractor`): a bottleneck at a quarter
    of the output width, between two 1x1 convolutions."""

    def __init__(self, *, in_channels: int, out_channels: int, num_res_blocks: int,
                 down: bool) -> None:
        super().__init__()
        inner = out_channels // 4
        if down:
            self.down_opt = _Downsample(channels=in_channels, use_conv=False)
        self.in_conv = nn.Conv2d(in_channels, inner, 1)
        self.body = nn.Sequential(*[LightResBlock(channels=inner) for _ in range(num_res_blocks)])
        self.out_conv = nn.Conv2d(inner, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "down_opt"):
            x = self.down_opt(x)
        return self.out_conv(self.body(self.in_conv(x)))


class T2IAdapter(nn.Module):
    """A spatial T2I-Adapter ("full", "full_xl", "light"): hint -> one feature per level."""

    def __init__(self, *, config: T2IAdapterConfig) -> None:
        super().__init__()
        if config.kind == "style":
            raise ValueError("a style adapter is a StyleAdapter, not a T2IAdapter")
        self.config = config
        # Fold each downscale x downscale pixel patch into channels.
        self.unshuffle = nn.PixelUnshuffle(config.downscale)
        unshuffled = config.hint_channels * config.downscale ** 2
        if config.kind == "light":
            self._build_light(unshuffled)
        else:
            self._build_full(unshuffled)

    def _build_full(self, unshuffled: int) -> None:
        cfg = self.config
        self.conv_in = nn.Conv2d(unshuffled, cfg.channels[0], 3, padding=1)
        blocks = []
        for level, width in enumerate(cfg.channels):
            previous = cfg.channels[max(level - 1, 0)]
            for index in range(cfg.num_res_blocks):
                first = index == 0
                blocks.append(AdapterResBlock(
                    in_channels=previous if first else width, out_channels=width,
                    down=first and cfg.downsamples(level), config=cfg))
        self.body = nn.ModuleList(blocks)

    def _build_light(self, unshuffled: int) -> None:
        cfg = self.config
        self.body = nn.ModuleList(
            LightExtractor(in_channels=cfg.channels[level - 1] if level else unshuffled,
                           out_channels=width, num_res_blocks=cfg.num_res_blocks,
                           down=cfg.downsamples(level))
            for level, width in enumerate(cfg.channels))

    @property
    def dtype(self) -> torch.dtype:
        return self.body[0].in_conv.weight.dtype if self.config.kind == "light" \
            else self.conv_in.weight.dtype

    def forward(self, hint: torch.Tensor) -> list[torch.Tensor]:
        """:param hint: (B, hint_channels, H, W) in [0, 1], H and W multiples of `downscale`
        :return: one (B, channels[i], H / feature_downscale(i), W / ...) map per level"""
        cfg = self.config
        if hint.shape[1] != cfg.hint_channels:
            raise ValueError(f"T2I-Adapter: the hint has {hint.shape[1]} channels, "
                             f"this adapter takes {cfg.hint_channels}")
        if hint.shape[-2] % cfg.downscale or hint.shape[-1] % cfg.downscale:
            raise ValueError(f"T2I-Adapter: hint size {tuple(hint.shape[-2:])} is not a "
                             f"multiple of {cfg.downscale}")
        x = self.unshuffle(hint.to(self.dtype))
        if cfg.kind == "light":
            features = []
            for extractor in self.body:
                x = extractor(x)
                features.append(x)
            return features
        x = self.conv_in(x)
        features = []
        # One feature at the end of every level's run of residual blocks.
        for index, block in enumerate(self.body):
            x = block(x)
            if (index + 1) % cfg.num_res_blocks == 0:
                features.append(x)
        return features


class _LayerNorm32(nn.LayerNorm):
    """LayerNorm computed in float32 (as TencentARC's, for half-precision weights)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(),
                            self.bias.float(), self.eps).to(x.dtype)


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class StyleBlock(nn.Module):
    """CLIP's pre-norm transformer block (TencentARC `ResidualAttentionBlock`)."""

    def __init__(self, *, width: int, num_heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, num_heads, batch_first=True)
        self.ln_1 = _LayerNorm32(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, 4 * width)), ("gelu", _QuickGELU()),
            ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = _LayerNorm32(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class StyleAdapter(nn.Module):
    """The style adapter: CLIP vision hidden states -> `num_tokens` extra context tokens.

    Learnt queries (`style_embedding`) are appended to the image tokens, the sequence goes
    through `num_layers` transformer blocks, and the queries' outputs, normalised and
    projected by `proj`, become the tokens appended to the text context (TencentARC's
    `StyleAdapter`; `transformer_layes` is their spelling).
    """

    def __init__(self, *, config: T2IAdapterConfig) -> None:
        super().__init__()
        if config.kind != "style":
            raise ValueError(f"a {config.kind!r} adapter is a T2IAdapter, not a StyleAdapter")
        self.config = config
        width = config.width
        self.style_embedding = nn.Parameter(torch.zeros(1, config.num_tokens, width))
        self.ln_pre = _LayerNorm32(width)
        self.transformer_layes = nn.Sequential(
            *[StyleBlock(width=width, num_heads=config.num_heads)
              for _ in range(config.num_layers)])
        self.ln_post = _LayerNorm32(width)
        self.proj = nn.Parameter(torch.zeros(width, config.context_dim))

    def forward(self, clip_hidden: torch.Tensor) -> torch.Tensor:
        """:param clip_hidden: (B, tokens, width) CLIP vision last hidden states
        :return: (B, num_tokens, context_dim)"""
        if clip_hidden.shape[-1] != self.config.width:
            raise ValueError(f"style adapter: image features are {clip_hidden.shape[-1]} wide, "
                             f"this adapter takes {self.config.width}")
        queries = self.style_embedding.expand(clip_hidden.shape[0], -1, -1)
        x = torch.cat([clip_hidden.to(queries.dtype), queries], dim=1)
        x = self.transformer_layes(self.ln_pre(x))
        return self.ln_post(x[:, -self.config.num_tokens:]) @ self.proj


def encoder_targets(unet: UNetConfig) -> tuple[int, ...]:
    """The encoder block (index in `input_blocks`) after which each level's feature is added.

    As diffusers' `UNet2DConditionModel` adds `down_intrablock_additional_residuals`: a
    level with cross-attention gets it after its last res+attention block (before the
    downsampler); a level without gets it after the whole down block, i.e. after the
    downsampler where there is one (SDXL's first level), else after its last res block.
    A feature beyond these goes to the middle block's output (SDXL's fourth feature).
    """
    targets, start = [], 0
    levels = len(unet.channel_mult)
    for level in range(levels):
        last = start + unet.num_res_blocks
        has_down = level < levels - 1
        with_attention = unet.transformer_depth[level] > 0
        targets.append(last if with_attention or not has_down else last + 1)
        start = last + int(has_down)
    return tuple(targets)


def target_shapes(unet: UNetConfig) -> list[tuple[int, int]]:
    """(channels, latent downscale) the U-Net has at each target, then at the middle block."""
    levels = len(unet.channel_mult)
    shapes = []
    for level in range(levels):
        with_attention = unet.transformer_depth[level] > 0
        past_down = not with_attention and level < levels - 1
        shapes.append((unet.model_channels * unet.channel_mult[level],
                       2 ** (level + int(past_down))))
    shapes.append((unet.model_channels * unet.channel_mult[-1], 2 ** (levels - 1)))
    return shapes


@dataclass(frozen=True, kw_only=True, eq=False)
class T2IAdapterPatch(UNetPatch):
    """Adds a T2I-Adapter's features, times `weight`, to the U-Net encoder's features.

    `features[i]` (one row per image, or one row for all) goes after encoder block
    `encoder_targets(unet)[i]` (`after_input_block`: both the skip connection and the
    tensor flowing on see it, as diffusers' in-place add does); a feature beyond the
    levels goes to the middle block's output, where the first decoder block takes it
    (`before_output_block`, decoder block 0), when its channels match. `row_images` is the
    image of each row of the U-Net call (`for_rows` narrows it). A map whose size differs
    from the block's (a patch such as Deep Shrink changed it) is resized bilinearly.
    """

    features: list[torch.Tensor] | tuple[torch.Tensor, ...]
    weight: float
    row_images: list[int] | tuple[int, ...]
    unet: UNetConfig
    _targets: tuple[int, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_targets", encoder_targets(self.unet))

    def for_rows(self, rows: list[int]) -> T2IAdapterPatch:
        return replace(self, row_images=[self.row_images[r] for r in rows])

    def after_input_block(self, h: torch.Tensor, place: BlockPlace) -> torch.Tensor:
        if place.stage != "input" or place.index not in self._targets:
            return h
        level = self._targets.index(place.index)
        if level >= len(self.features):
            return h
        return h + self.weight * self._feature_for(level, h)

    def before_output_block(self, h: torch.Tensor, skip: torch.Tensor,
                            place: BlockPlace) -> tuple[torch.Tensor, torch.Tensor]:
        middle = len(self._targets)
        if place.index != 0 or len(self.features) <= middle:
            return h, skip
        if self.features[middle].shape[1] != h.shape[1]:
            return h, skip  # diffusers adds it only where the shapes agree
        return h + self.weight * self._feature_for(middle, h), skip

    def _feature_for(self, index: int, h: torch.Tensor) -> torch.Tensor:
        """Feature `index` for the rows of this call, on h's device, dtype and size."""
        feature = self.features[index]
        if feature.shape[1] != h.shape[1]:
            raise ValueError(f"T2I-Adapter: feature {index} has {feature.shape[1]} channels, "
                             f"the U-Net's block has {h.shape[1]} (adapter for another model)")
        if feature.shape[0] != 1:
            if len(self.row_images) != h.shape[0]:
                raise ValueError(f"T2I-Adapter: {h.shape[0]} rows in the U-Net call but "
                                 f"{len(self.row_images)} described")
            rows = torch.tensor(list(self.row_images), device=feature.device)
            feature = feature.index_select(0, rows)
        feature = feature.to(device=h.device, dtype=h.dtype)
        if feature.shape[-2:] != h.shape[-2:]:
            feature = F.interpolate(feature, size=tuple(h.shape[-2:]), mode="bilinear",
                                    align_corners=False)
        return feature
