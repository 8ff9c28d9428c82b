"""Perturbed-Attention Guidance (PAG) as a CFG guidance hook and a U-Net patch.

Ahn et al. (2024), "Self-Rectifying Diffusion Sampling with Perturbed-Attention
Guidance", https://arxiv.org/abs/2403.17377. One more U-Net pass on the positive prompt
whose self-attention, in the chosen layers, is replaced by the identity attention
matrix: each token attends only to itself, so the layer outputs its values V. The
guided prediction moves away from that structurally degraded prediction:

    eps = eps_cfg + s_t * (eps_c - eps_p),   s_t = max(s - a * (1000 - t), 0)

(`a` the adaptive scale, 0 = constant s; t the U-Net timestep of the step, as diffusers'
`PAGMixin._get_pag_scale`). Both passes see the same x at the same sigma, so in the
denoiser's D space the term is the same: D += s_t * (D_c - D_p).

Layers are named as diffusers' `pag_applied_layers`: each entry is searched (as a
regular expression, `re.search`) in the diffusers module name of every self-attention,
e.g. "mid" (default), "up", "down", "up_blocks.1", "down_blocks.2.attentions.0"; the
older spelling "mid.block_0", "up.block_1", "up.block_1.attentions_0" is accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from modules.nn.configs import UNetConfig
from modules.nn.unet_patches import Attend, AttentionPlace, UNetPatch, UNetPatches
from modules.sampling.guidance import GuidanceParams

# Layer names are short regular expressions without repetition operators, so a search
# cannot backtrack catastrophically (they come from API clients).
_NAME_CHARS = re.compile(r"^[A-Za-z0-9_.|()]+$")
_OLD_FORM = re.compile(r"^(down|up|mid)\.block_(\d+)(?:\.attentions_(\d+))?$")


def adaptive_scale(scale: float, adaptive: float, t: float) -> float:
    """diffusers' PAG scale at timestep t: max(scale - adaptive * (1000 - t), 0)."""
    if adaptive <= 0:
        return scale
    return max(scale - adaptive * (1000 - t), 0.0)


def parse_layers(text: str) -> tuple[str, ...]:
    """Comma-separated layer names -> regular expressions over diffusers' module names.

    Raises ValueError for an empty list or a name with other characters than letters,
    digits, `_ . | ( )`."""
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise ValueError("no layer named (e.g. \"mid\", \"up\", \"up_blocks.1\")")
    patterns = []
    for name in names:
        if not _NAME_CHARS.match(name):
            raise ValueError(f"{name!r}: only letters, digits and _ . | ( ) are allowed")
        patterns.append(_translated(name))
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"{pattern!r} is not a valid pattern: {error}") from None
    return tuple(patterns)


def _translated(name: str) -> str:
    """diffusers 0.28's "up.block_1.attentions_0" spelling -> today's module-name form."""
    old = _OLD_FORM.match(name)
    if old is None:
        return name
    stage, block, attention = old.groups()
    if stage == "mid":
        return "mid_block" if block == "0" else f"mid_block_{block}"  # only block 0 exists
    found = f"{stage}_blocks.{block}.attentions"
    return found if attention is None else f"{found}.{attention}."


def diffusers_name(place: AttentionPlace, num_res_blocks: int) -> str:
    """The diffusers module name of the self-attention at `place`.

    diffusers numbers down/up blocks by resolution level (up from the deepest) and the
    attentions inside one by their order there; our encoder blocks follow the input
    convolution, `num_res_blocks` plus a downsampler per level."""
    block = place.block
    tail = f"transformer_blocks.{place.transformer}.attn1"
    if block.stage == "middle":
        return f"mid_block.attentions.0.{tail}"
    if block.stage == "input":
        within = (block.index - 1) % (num_res_blocks + 1)
        return f"down_blocks.{block.level}.attentions.{within}.{tail}"
    per_level = num_res_blocks + 1
    return f"up_blocks.{block.index // per_level}.attentions.{block.index % per_level}.{tail}"


def attention_names(config: UNetConfig) -> Iterator[str]:
    """Every self-attention module name of a U-Net of this config (diffusers' naming)."""
    levels = len(config.channel_mult)
    for level, depth in enumerate(config.transformer_depth):
        for within in range(config.num_res_blocks):
            for t in range(depth):
                yield f"down_blocks.{level}.attentions.{within}.transformer_blocks.{t}.attn1"
    for t in range(config.transformer_depth_middle):
        yield f"mid_block.attentions.0.transformer_blocks.{t}.attn1"
    for up in range(levels):
        depth = config.transformer_depth[levels - 1 - up]
        for within in range(config.num_res_blocks + 1):
            for t in range(depth):
                yield f"up_blocks.{up}.attentions.{within}.transformer_blocks.{t}.attn1"


def unmatched_layers(patterns: tuple[str, ...], config: UNetConfig) -> list[str]:
    """The patterns that name no self-attention of this U-Net (diffusers refuses them)."""
    names = list(attention_names(config))
    return [p for p in patterns if not any(re.search(p, name) for name in names)]


@dataclass(frozen=True)
class IdentityAttention(UNetPatch):
    """Self-attention replaced by the identity matrix (output = V) where `patterns` match."""

    patterns: tuple[str, ...]
    num_res_blocks: int

    def changes_self_attention(self, place: AttentionPlace) -> bool:
        name = diffusers_name(place, self.num_res_blocks)
        return any(re.search(p, name) for p in self.patterns)

    def self_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       place: AttentionPlace, attend: Attend) -> torch.Tensor:
        return v


@dataclass
class PAGHook:
    """The CFG guidance hook: one perturbed pass per step whose progress is in [start, end]."""

    scale: float
    adaptive: float
    patch: IdentityAttention
    sigma_to_t: Callable[[torch.Tensor], torch.Tensor]
    start: float = 0.0
    end: float = 1.0

    def __call__(self, params: GuidanceParams) -> None:
        fraction = params.step / max(1, params.total_steps)
        if not self.start <= fraction <= self.end:
            return
        t = float(self.sigma_to_t(params.sigma[:1])[0])
        scale = adaptive_scale(self.scale, self.adaptive, t)
        if scale == 0:
            return
        perturbed = params.rerun(UNetPatches((self.patch,)))
        params.denoised = params.denoised + scale * (params.cond - perturbed.to(params.cond))


def add_pag(hooks, *, scale: float, adaptive: float, patterns: tuple[str, ...],
            config: UNetConfig, sigma_to_t: Callable[[torch.Tensor], torch.Tensor],
            start: float = 0.0, end: float = 1.0) -> None:
    """Append PAG's guidance hook to CFG `hooks` (layers already checked against `config`)."""
    patch = IdentityAttention(patterns, config.num_res_blocks)
    hooks.guidance.append(PAGHook(scale, adaptive, patch, sigma_to_t, start, end))
