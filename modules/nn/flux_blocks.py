"""The building blocks of the Flux.1 transformer: RoPE, modulation, double and single blocks.

Flux.1 (Black Forest Labs, 2024, https://github.com/black-forest-labs/flux) is a rectified
flow transformer. Like SD3's MMDiT (Esser et al., 2024, "Scaling Rectified Flow
Transformers for High-Resolution Image Synthesis", https://arxiv.org/abs/2403.03206) it
starts with *double-stream* blocks: image tokens and text tokens keep their own weights
(modulation, QKV, MLP) but attend jointly over the concatenation [text, image]. It then
concatenates the two streams and runs *single-stream* blocks, in which one linear layer
computes Q, K, V and the MLP's hidden layer in parallel (Dehghani et al., 2023,
"Scaling Vision Transformers to 22 Billion Parameters") and a second one projects the
attention output and the MLP activation back together.

Every block is conditioned on one vector `vec` (timestep, guidance and pooled CLIP) by
adaptive LayerNorm (Peebles & Xie, 2023, "Scalable Diffusion Models with Transformers"):
a linear layer of SiLU(vec) gives a shift, a scale and a gate per sub-layer. Queries and
keys are RMS-normalised per head (Henry et al., 2020, "Query-Key Normalization for
Transformers") and rotated by rotary position embeddings (Su et al., 2021, "RoFormer")
over three position axes (t, h, w), each axis owning a slice of the head's channels.

Attribute names are Black Forest Labs' (`img_mod.lin`, `img_attn.qkv`,
`img_attn.norm.query_norm.scale`, `img_mlp.0`, `linear1`, `modulation.lin`, ...), so the
tensors of `flux1-dev.safetensors` load by name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from modules.nn.attention import AttentionLayer, Cancel, attention

# LayerNorm / RMSNorm epsilon of the reference implementation.
NORM_EPS = 1e-6


class Rotary(NamedTuple):
    """cos and sin of the rotation angles, (B, 1, L, head_dim / 2) float32 each."""

    cos: torch.Tensor
    sin: torch.Tensor


class PositionEmbedding(nn.Module):
    """Rotary embedding over N position axes (`pe_embedder`); no weights.

    Axis i has `axes_dim[i]` channels of each head, i.e. `axes_dim[i] / 2` channel pairs;
    pair j of axis i turns by the angle pos_i * theta^(-2j / axes_dim[i]).
    """

    def __init__(self, *, theta: float, axes_dim: tuple[int, ...]) -> None:
        super().__init__()
        self.theta = theta
        self.axes_dim = axes_dim

    def forward(self, ids: torch.Tensor) -> Rotary:
        """:param ids: (B, L, n_axes) positions; :return: the rotation of every token."""
        # float64 for the angles, as in the reference, except where a device lacks it.
        dtype = torch.float32 if ids.device.type == "mps" else torch.float64
        angles = []
        for axis, dim in enumerate(self.axes_dim):
            exponent = torch.arange(0, dim, 2, dtype=dtype, device=ids.device) / dim
            angles.append(ids[..., axis].to(dtype)[..., None] * self.theta**-exponent)
        angle = torch.cat(angles, dim=-1).unsqueeze(1)
        return Rotary(cos=angle.cos().float(), sin=angle.sin().float())


def apply_rotary(x: torch.Tensor, rotary: Rotary) -> torch.Tensor:
    """Rotate consecutive channel pairs (x0, x1) of (B, H, L, D) `x`, in float32."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out0 = rotary.cos * x0 - rotary.sin * x1
    out1 = rotary.sin * x0 + rotary.cos * x1
    return torch.stack([out0, out1], dim=-1).flatten(-2).type_as(x)


class MLPEmbedder(nn.Module):
    """Linear-SiLU-linear embedding of a vector (`time_in`, `guidance_in`, `vector_in`)."""

    def __init__(self, *, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS normalisation with a learned per-channel `scale` (computed in float32)."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rrms = torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + NORM_EPS)
        return (x.float() * rrms).to(x.dtype) * self.scale


class QKNorm(nn.Module):
    """Separate RMS norms of the queries and the keys, per head."""

    def __init__(self, *, dim: int) -> None:
        super().__init__()
        self.query_norm = RMSNorm(dim=dim)
        self.key_norm = RMSNorm(dim=dim)

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised q and k, in the dtype of v."""
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class ModulationOut(NamedTuple):
    """adaLN parameters of one sub-layer: x -> (1 + scale) * norm(x) + shift; out * gate."""

    shift: torch.Tensor
    scale: torch.Tensor
    gate: torch.Tensor


class Modulation(nn.Module):
    """Shift, scale and gate from SiLU(vec): one triple (single) or two (double block)."""

    def __init__(self, *, dim: int, double: bool) -> None:
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: torch.Tensor) -> list[ModulationOut]:
        """(B, dim) vector to 1 or 2 `ModulationOut`s of (B, 1, dim) tensors."""
        chunks = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return [ModulationOut(*chunks[i:i + 3]) for i in range(0, self.multiplier, 3)]


def modulate(x: torch.Tensor, mod: ModulationOut) -> torch.Tensor:
    """Parameter-free LayerNorm of `x`, then the adaptive scale and shift."""
    normed = F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)
    return (1 + mod.scale) * normed + mod.shift


def split_heads(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, ...]:
    """(B, L, 3 * H * D) to q, k, v of (B, H, L, D) each."""
    batch, tokens, _ = qkv.shape
    q, k, v = qkv.view(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    return q, k, v


class JointAttention(AttentionLayer):
    """Attention with rotary q and k over (B, H, L, D); returns (B, L, H * D)."""

    def forward(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rotary: Rotary,
        cancel: Cancel | None = None,
    ) -> torch.Tensor:
        q, k = apply_rotary(q, rotary).to(v.dtype), apply_rotary(k, rotary).to(v.dtype)
        out = attention(q, k, v, backend=self.attention_backend,
                        upcast=self.attention_upcast, cancel=cancel)
        return out.transpose(1, 2).flatten(2)


class SelfAttention(nn.Module):
    """The QKV projection, per-head q/k norm and output projection of one stream."""

    def __init__(self, *, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim=dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised q, k and v of (B, H, L, D) for the modulated tokens `x`."""
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


def mlp(*, dim: int, hidden_dim: int) -> nn.Sequential:
    """Linear-GELU(tanh)-linear feed-forward (`img_mlp.0`, `img_mlp.2`)."""
    return nn.Sequential(
        nn.Linear(dim, hidden_dim, bias=True),
        nn.GELU(approximate="tanh"),
        nn.Linear(hidden_dim, dim, bias=True),
    )


class DoubleStreamBlock(nn.Module):
    """Image and text streams with their own weights, attending jointly to [text, image]."""

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float,
                 qkv_bias: bool) -> None:
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        # Image stream.
        self.img_mod = Modulation(dim=hidden_size, double=True)
        self.img_attn = SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.img_mlp = mlp(dim=hidden_size, hidden_dim=mlp_hidden)
        # Text stream.
        self.txt_mod = Modulation(dim=hidden_size, double=True)
        self.txt_attn = SelfAttention(dim=hidden_size, num_heads=num_heads, qkv_bias=qkv_bias)
        self.txt_mlp = mlp(dim=hidden_size, hidden_dim=mlp_hidden)
        # The joint attention kernel (carries the attention backend choice).
        self.attention = JointAttention()

    def forward(
        self, img: torch.Tensor, txt: torch.Tensor, vec: torch.Tensor, rotary: Rotary,
        cancel: Cancel | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One block over image tokens (B, L_img, C) and text tokens (B, L_txt, C)."""
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        # Joint attention: text tokens first, then image tokens.
        img_q, img_k, img_v = self.img_attn.project(modulate(img, img_mod1))
        txt_q, txt_k, txt_v = self.txt_attn.project(modulate(txt, txt_mod1))
        out = self.attention(torch.cat([txt_q, img_q], dim=2), torch.cat([txt_k, img_k], dim=2),
                             torch.cat([txt_v, img_v], dim=2), rotary, cancel)
        txt_out, img_out = out[:, :txt.shape[1]], out[:, txt.shape[1]:]
        # Gated residual attention and MLP, per stream.
        img = img + img_mod1.gate * self.img_attn.proj(img_out)
        img = img + img_mod2.gate * self.img_mlp(modulate(img, img_mod2))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_out)
        txt = txt + txt_mod2.gate * self.txt_mlp(modulate(txt, txt_mod2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """One stream of [text, image] tokens; attention and MLP computed in parallel."""

    def __init__(self, *, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden_dim = int(hidden_size * mlp_ratio)
        # Q, K, V and the MLP's hidden layer from one projection.
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden_dim)
        # Attention output and MLP activation back to the stream, in one projection.
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.norm = QKNorm(dim=hidden_size // num_heads)
        self.modulation = Modulation(dim=hidden_size, double=False)
        self.attention = JointAttention()

    def forward(self, x: torch.Tensor, vec: torch.Tensor, rotary: Rotary,
                cancel: Cancel | None = None) -> torch.Tensor:
        """One block over the (B, L_txt + L_img, C) tokens."""
        (mod,) = self.modulation(vec)
        qkv, hidden = self.linear1(modulate(x, mod)).split(
            [3 * self.hidden_size, self.mlp_hidden_dim], dim=-1
        )
        q, k, v = split_heads(qkv, self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.attention(q, k, v, rotary, cancel)
        out = self.linear2(torch.cat([out, F.gelu(hidden, approximate="tanh")], dim=-1))
        return x + mod.gate * out


class LastLayer(nn.Module):
    """adaLN (shift, scale; no gate) and the projection of tokens to patch channels."""

    def __init__(self, *, hidden_size: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True)
        )

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(vec).chunk(2, dim=1)
        normed = F.layer_norm(x, (x.shape[-1],), eps=NORM_EPS)
        return self.linear((1 + scale[:, None, :]) * normed + shift[:, None, :])
