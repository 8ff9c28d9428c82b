"""The U-Net's spatial transformer: self-attention, cross-attention to text, GEGLU MLP.

Latent Diffusion (Rombach et al., 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", https://arxiv.org/abs/2112.10752) conditions the U-Net on text by
treating each feature-map pixel as a token: a `SpatialTransformer` flattens the map,
runs `BasicTransformerBlock`s (self-attention over pixels, cross-attention from pixels
to the text encoder's tokens, a GEGLU feed-forward of Shazeer, 2020, "GLU Variants
Improve Transformer") and folds it back, with a residual around the whole thing.

Attribute names follow CompVis `ldm/modules/attention.py` (`proj_in`,
`transformer_blocks.N.attn1.to_q`, `ff.net.0.proj`, ...) so checkpoint keys load by name.

Hook point `context_transform` (a `ContextTransform`, passed per call from
`UNetModel.forward` down to every attention layer): when given, an attention layer
computes its keys from `transform(source)[0]` and its values from `transform(source)[1]`,
where `source` is the text context (cross-attention) or the pixel tokens
(self-attention). Hypernetworks use it (`modules/networks/hypernetwork.py`); it is an
argument of the call, so one job's transform never reaches another job's call.

Hook point `patches` (`modules.nn.unet_patches.UNetPatches`, with the `BlockPlace` of the
U-Net block this transformer sits in): a patch may wrap the self-attention kernel of any
transformer block (`SelfAttention`), e.g. HyperTile's tiles or PAG's identity attention,
and change the output of any cross-attention kernel before `to_out`
(`CrossAttentionPatches`), e.g. IP-Adapter's decoupled attention to image tokens.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import AttentionLayer, Cancel, attention, check
from modules.nn.ops import add_fresh, mul_fresh
from modules.nn.token_merging import MapMerging, TokenMerging
from modules.nn.unet_patches import (
    AttentionPlace,
    BlockPlace,
    CrossAttentionPatches,
    SelfAttention,
    UNetPatches,
)


class ContextTransform(Protocol):
    """What keys and values are computed from: (key source, value source) for a source."""

    def __call__(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class CrossAttention(AttentionLayer):
    """Multi-head attention from `query_dim` tokens to `context_dim` tokens.

    With no context it is self-attention (`attn1`); with the text context it is the
    cross-attention (`attn2`). Projections have no bias except the output one.
    """

    def __init__(
        self, *, query_dim: int, context_dim: int | None, heads: int, head_dim: int
    ) -> None:
        """
        :param query_dim: channels of the pixel tokens
        :param context_dim: channels of the context tokens (None: same as `query_dim`)
        :param heads: number of attention heads
        :param head_dim: channels per head
        """
        super().__init__()
        inner_dim = heads * head_dim
        self.heads = heads
        # Query from the pixels; key and value from the context (or the pixels).
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner_dim, bias=False)
        # Output projection (index 0; LDM's index 1 was dropout).
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim))

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, channels = x.shape
        return x.view(batch, tokens, self.heads, channels // self.heads).transpose(1, 2)

    def _fused_projections(
        self, x: torch.Tensor, context: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """q, k, v with one matmul for everything computed from the same tokens.

        Self-attention: q, k and v all come from `x`, so [W_q; W_k; W_v] is applied once;
        cross-attention: k and v both come from the context. The weights are concatenated
        per call from `to_q` / `to_k` / `to_v`, so checkpoints keep their key names and a
        per-request patch (LoRA through `functional_call`) is honoured; the concatenation
        is a few MB against a matmul over thousands of tokens.
        """
        if context is None:
            weight = torch.cat([self.to_q.weight, self.to_k.weight, self.to_v.weight])
            return self._heads_of_stack(F.linear(x, weight), 3)
        q = self._split_heads(self.to_q(x))
        weight = torch.cat([self.to_k.weight, self.to_v.weight])
        k, v = self._heads_of_stack(F.linear(context, weight), 2)
        return q, k, v

    def _heads_of_stack(self, stacked: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        """(B, T, parts * C) -> `parts` views shaped (B, heads, T, C / heads)."""
        batch, tokens, channels = stacked.shape
        head_dim = channels // (parts * self.heads)
        split = stacked.view(batch, tokens, parts, self.heads, head_dim)
        return split.permute(2, 0, 3, 1, 4).unbind(0)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_transform: ContextTransform | None = None,
        cancel: Cancel | None = None,
        self_attention: SelfAttention | None = None,
        cross_attention: CrossAttentionPatches | None = None,
    ) -> torch.Tensor:
        """:param x: (B, T, query_dim); :param context: (B, S, context_dim) or None;
        :param context_transform: per-call change of the key / value sources (module docstring)
        :param cancel: checked between query chunks of a large attention (`attention`)
        :param self_attention: patches around the kernel (self-attention only, module docstring)
        :param cross_attention: patches of the kernel's output (cross-attention only)
        """
        source = x if context is None else context
        if context_transform is None:
            q, k, v = self._fused_projections(x, context)
        else:
            key_source, value_source = context_transform(source)
            q = self._split_heads(self.to_q(x))
            k = self._split_heads(self.to_k(key_source))
            v = self._split_heads(self.to_v(value_source))
        # softmax(q k^T / sqrt(d)) v with this layer's kernel (through the call's patches).
        def kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return attention(q, k, v, backend=self.attention_backend,
                             upcast=self.attention_upcast, cancel=cancel)

        if self_attention is not None and context is None:
            out = self_attention(q, k, v, kernel)
        else:
            out = kernel(q, k, v)
            if cross_attention is not None and context is not None:
                out = cross_attention(q, out)
        # Merge the heads back into channels.
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    """A linear layer giving 2 x `dim_out` channels, half of them gating the other half."""

    def __init__(self, *, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        # gelu(gate) is a fresh tensor: multiply into it instead of allocating another.
        return mul_fresh(F.gelu(gate), hidden)


class FeedForward(nn.Module):
    """The transformer MLP: GEGLU to 4x width, then back (`net.0.proj`, `net.2`)."""

    def __init__(self, *, dim: int, mult: int = 4) -> None:
        super().__init__()
        inner = dim * mult
        # Index 1 is LDM's dropout slot (p = 0 in SD), kept so the indices match.
        self.net = nn.Sequential(
            GEGLU(dim_in=dim, dim_out=inner), nn.Identity(), nn.Linear(inner, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Pre-norm transformer block: self-attention, cross-attention, feed-forward."""

    def __init__(self, *, dim: int, heads: int, head_dim: int, context_dim: int) -> None:
        super().__init__()
        self.attn1 = CrossAttention(query_dim=dim, context_dim=None, heads=heads, head_dim=head_dim)
        self.ff = FeedForward(dim=dim)
        self.attn2 = CrossAttention(
            query_dim=dim, context_dim=context_dim, heads=heads, head_dim=head_dim
        )
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_transform: ContextTransform | None = None,
        merging: MapMerging | None = None,
        cancel: Cancel | None = None,
        self_attention: SelfAttention | None = None,
        cross_attention: CrossAttentionPatches | None = None,
    ) -> torch.Tensor:
        """:param merging: token merging of the self-attention (`modules.nn.token_merging`);
        :param cancel: a stop request checked inside long attentions;
        :param self_attention: the call's patches around `attn1`'s kernel, if any;
        :param cross_attention: the call's patches of `attn2`'s output, if any"""
        # Pixels attend to each other (each branch output is fresh: add into it).
        x = add_fresh(self._self_attention(x, context_transform, merging, cancel,
                                           self_attention), x)
        # Pixels attend to the text tokens.
        x = add_fresh(self.attn2(self.norm2(x), context, context_transform, cancel,
                                 cross_attention=cross_attention), x)
        # Per-token MLP.
        return add_fresh(self.ff(self.norm3(x)), x)

    def _self_attention(self, x: torch.Tensor, context_transform: ContextTransform | None,
                        merging: MapMerging | None, cancel: Cancel | None,
                        self_attention: SelfAttention | None) -> torch.Tensor:
        normed = self.norm1(x)
        if merging is None:
            return self.attn1(normed, context_transform=context_transform, cancel=cancel,
                              self_attention=self_attention)
        # ToMe: attend over merged tokens, then give every token its group's output.
        plan = merging.plan(x)
        return plan.unmerge(self.attn1(plan.merge(normed), context_transform=context_transform,
                                       cancel=cancel, self_attention=self_attention))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, conditioned on a context.

    SD1 projects in and out with 1x1 convolutions (before flattening / after
    unflattening); SD2 and SDXL use linear layers on the flattened tokens
    (`use_linear`). Both give the same function, only the weight rank differs.
    """

    def __init__(
        self,
        *,
        channels: int,
        heads: int,
        depth: int,
        context_dim: int,
        use_linear: bool,
        norm_num_groups: int = 32,
    ) -> None:
        """
        :param channels: channels of the feature map (= transformer width)
        :param heads: attention heads; head width is `channels // heads`
        :param depth: number of `BasicTransformerBlock`s
        :param context_dim: channels of the cross-attention context
        :param use_linear: linear `proj_in`/`proj_out` instead of 1x1 convolutions
        """
        super().__init__()
        self.use_linear = use_linear
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=1e-6)
        if use_linear:
            self.proj_in = nn.Linear(channels, channels)
        else:
            self.proj_in = nn.Conv2d(channels, channels, kernel_size=1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(
                dim=channels, heads=heads, head_dim=channels // heads, context_dim=context_dim
            )
            for _ in range(depth)
        )
        if use_linear:
            self.proj_out = nn.Linear(channels, channels)
        else:
            self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_transform: ContextTransform | None = None,
        token_merging: TokenMerging | None = None,
        cancel: Cancel | None = None,
        patches: UNetPatches | None = None,
        place: BlockPlace | None = None,
    ) -> torch.Tensor:
        """:param x: (B, C, H, W); :param context: (B, S, context_dim);
        :param context_transform: see the module docstring;
        :param token_merging: ToMe for this call (`modules.nn.token_merging`);
        :param cancel: a stop request checked between blocks and inside long attentions;
        :param patches: the call's U-Net patches, with `place` the block this one is in"""
        batch, channels, height, width = x.shape
        merging = token_merging.for_map(height, width) if token_merging is not None else None
        h = self.norm(x)
        # Project in, then flatten pixels into tokens (B, H*W, C).
        if not self.use_linear:
            h = self.proj_in(h)
        h = h.flatten(2).transpose(1, 2)
        if self.use_linear:
            h = self.proj_in(h)
        for index, block in enumerate(self.transformer_blocks):
            check(cancel)
            self_attention = cross_attention = None
            if patches and place is not None:
                attention_place = AttentionPlace(place, index, height, width)
                self_attention = patches.self_attention_at(attention_place)
                cross_attention = patches.cross_attention_at(attention_place)
            h = block(h, context, context_transform, merging, cancel, self_attention,
                      cross_attention)
        # Project out and fold the tokens back into a map.
        if self.use_linear:
            h = self.proj_out(h)
        # A view (no copy) when the model runs channels_last, see `UNetModel.set_channels_last`.
        h = h.transpose(1, 2).reshape(batch, channels, height, width)
        if not self.use_linear:
            h = self.proj_out(h)
        return add_fresh(h, x)
