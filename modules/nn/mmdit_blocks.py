"""The building blocks of the MMDiT: embedders, the two-stream joint block, the final layer.

Stable Diffusion 3 (Esser et al., 2024, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis", https://arxiv.org/abs/2403.03206) denoises with a
transformer over two token streams: image patches (`x`) and text tokens (`context`).
Each stream has its own weights (a "dismantled" DiT block of Peebles & Xie, 2023,
"Scalable Diffusion Models with Transformers"), but both streams attend jointly: their
queries, keys and values are concatenated along the token axis for one attention, whose
output is split back. Every sub-layer is modulated by adaptive LayerNorm (adaLN): the
conditioning vector `c` (timestep + pooled text) gives a shift, a scale and a gate per
sub-layer. SD3.5 normalises queries and keys with RMSNorm per head (`ln_q`, `ln_k`);
SD3.5 Medium's MMDiT-X gives the image stream of its first blocks a second,
image-only self-attention (`attn2`) that shares the first LayerNorm.

Attribute names follow Stability AI's reference (`sd3_impls.py`, `mmditx.py`), so the
single files load by name: `attn.qkv`, `attn.ln_q`, `attn.proj`, `mlp.fc1`, `mlp.fc2`,
`adaLN_modulation.1`, `final_layer.linear`.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.nn.attention import AttentionLayer, Cancel, attention
from modules.nn.timestep import timestep_embedding

# Epsilon of every LayerNorm and RMSNorm of the reference.
NORM_EPS = 1e-6

QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: scale and shift every token of `x` (B, T, C) by per-sample (B, C) vectors."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class EmbedderMLP(nn.Module):
    """Linear, SiLU, Linear: the timestep and pooled-text embedders (`mlp.0`, `mlp.2`)."""

    def __init__(self, *, in_features: int, hidden_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_features, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.to(self.mlp[0].weight.dtype))


class TimestepEmbedder(EmbedderMLP):
    """Sinusoidal embedding of the timestep ([cos | sin], 256 channels), then the MLP."""

    def __init__(self, *, hidden_size: int, frequency_size: int = 256) -> None:
        super().__init__(in_features=frequency_size, hidden_size=hidden_size)
        self.frequency_size = frequency_size

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        return super().forward(timestep_embedding(timesteps, self.frequency_size))


class PatchEmbed(nn.Module):
    """Cut the latent into p×p patches and project each to a token (a strided conv)."""

    def __init__(self, *, patch_size: int, in_channels: int, hidden_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B, H/p * W/p, hidden), tokens in row-major order.
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """The feed-forward of a stream: fc1, tanh-approximated GELU, fc2."""

    def __init__(self, *, hidden_size: int, mlp_hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SelfAttention(nn.Module):
    """The projections around an attention: fused `qkv`, optional RMS qk-norm, output `proj`.

    The attention itself runs in `JointBlock`, which may join this stream's q, k, v with
    another stream's. A "pre-only" attention (the last block's text stream, whose output
    nobody reads) has no output projection.
    """

    def __init__(self, *, hidden_size: int, heads: int, qk_norm: str | None,
                 pre_only: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = hidden_size // heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        if qk_norm == "rms":
            self.ln_q = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
            self.ln_k = nn.RMSNorm(self.head_dim, eps=NORM_EPS)
        elif qk_norm is not None:
            raise ValueError(f"unknown qk_norm {qk_norm!r}; expected 'rms' or None")
        self.qk_norm = qk_norm
        if not pre_only:
            self.proj = nn.Linear(hidden_size, hidden_size)

    def pre_attention(self, x: torch.Tensor) -> QKV:
        """Tokens (B, T, C) -> q, k, v, each (B, heads, T, head_dim)."""
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        # SD3.5: RMS-normalise each head's queries and keys (stabilises large models).
        if self.qk_norm is not None:
            q, k = self.ln_q(q), self.ln_k(k)
        return q, k, v

    def post_attention(self, out: torch.Tensor) -> torch.Tensor:
        """Attention output (B, heads, T, head_dim) -> tokens (B, T, C) through `proj`."""
        batch, _, tokens, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class DismantledBlock(nn.Module):
    """One stream's half of a joint block: adaLN, attention projections, MLP.

    Modulations from `c`: (shift, scale, gate) for the attention and for the MLP, plus
    (shift, scale, gate) for `attn2` in MMDiT-X blocks; a pre-only block has only the
    attention's (shift, scale).
    """

    def __init__(self, *, hidden_size: int, heads: int, mlp_ratio: float, qk_norm: str | None,
                 pre_only: bool = False, self_attn2: bool = False) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.attn = SelfAttention(hidden_size=hidden_size, heads=heads, qk_norm=qk_norm,
                                  pre_only=pre_only)
        self.attn2 = (SelfAttention(hidden_size=hidden_size, heads=heads, qk_norm=qk_norm)
                      if self_attn2 else None)
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
            self.mlp = Mlp(hidden_size=hidden_size, mlp_hidden=int(hidden_size * mlp_ratio))
        self.modulations = 2 if pre_only else (9 if self_attn2 else 6)
        self.adaLN_modulation = nn.Sequential(
            nn.SiLU(), nn.Linear(hidden_size, self.modulations * hidden_size)
        )

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor
                      ) -> tuple[QKV, QKV | None, tuple[torch.Tensor, ...]]:
        """q, k, v of the modulated tokens (and of `attn2`), and the modulations."""
        mods = self.adaLN_modulation(c).chunk(self.modulations, dim=1)
        normed = self.norm1(x)
        qkv = self.attn.pre_attention(modulate(normed, mods[0], mods[1]))
        # MMDiT-X: the second attention reads the same normalised tokens, its own modulation.
        qkv2 = (self.attn2.pre_attention(modulate(normed, mods[6], mods[7]))
                if self.attn2 is not None else None)
        return qkv, qkv2, mods

    def post_attention(self, x: torch.Tensor, out: torch.Tensor, out2: torch.Tensor | None,
                       mods: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """Gated residuals of the attention(s), then of the modulated MLP."""
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mods[:6]
        x = x + gate_msa.unsqueeze(1) * self.attn.post_attention(out)
        if self.attn2 is not None and out2 is not None:
            x = x + mods[8].unsqueeze(1) * self.attn2.post_attention(out2)
        mlp_out = self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x + gate_mlp.unsqueeze(1) * mlp_out


class JointBlock(AttentionLayer):
    """A text stream block and an image stream block sharing one joint attention."""

    def __init__(self, *, hidden_size: int, heads: int, mlp_ratio: float, qk_norm: str | None,
                 pre_only: bool = False, self_attn2: bool = False) -> None:
        """
        :param pre_only: the last block: the text stream only feeds keys and values
        :param self_attn2: MMDiT-X: the image stream has a second self-attention
        """
        super().__init__()
        common = {"hidden_size": hidden_size, "heads": heads, "mlp_ratio": mlp_ratio,
                  "qk_norm": qk_norm}
        self.context_block = DismantledBlock(**common, pre_only=pre_only)
        self.x_block = DismantledBlock(**common, self_attn2=self_attn2)

    def _attend(self, qkv: QKV, cancel: Cancel | None) -> torch.Tensor:
        return attention(*qkv, backend=self.attention_backend, upcast=self.attention_upcast,
                         cancel=cancel)

    def forward(self, context: torch.Tensor, x: torch.Tensor, c: torch.Tensor, *,
                cancel: Cancel | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(context, x) tokens -> updated (context, x); context is None after a pre-only block."""
        context_qkv, _, context_mods = self.context_block.pre_attention(context, c)
        x_qkv, x_qkv2, x_mods = self.x_block.pre_attention(x, c)
        # Joint attention: text tokens first, then image tokens, along the token axis.
        joint = tuple(torch.cat(pair, dim=2) for pair in zip(context_qkv, x_qkv, strict=True))
        out = self._attend(joint, cancel)  # type: ignore[arg-type]
        text_tokens = context.shape[1]
        context_out, x_out = out[:, :, :text_tokens], out[:, :, text_tokens:]
        x_out2 = self._attend(x_qkv2, cancel) if x_qkv2 is not None else None
        x = self.x_block.post_attention(x, x_out, x_out2, x_mods)
        if self.context_block.pre_only:
            return None, x
        return self.context_block.post_attention(context, context_out, None, context_mods), x


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm and a projection of each token to its patch's outputs."""

    def __init__(self, *, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=NORM_EPS)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        # (shift, scale) in this order (diffusers' `norm_out` stores scale first).
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
