"""A trainable LoRA over a frozen model, written in kohya's file format.

LoRA (Hu et al., 2021, https://arxiv.org/abs/2106.09685) learns W' = W + (alpha / r) up @ down
for chosen layers, with down (r, in) and up (out, r); up starts at zero, so training
starts from the base model exactly. As kohya's standard network, the layers are every
Linear / 1x1 conv inside the U-Net's transformer blocks (`proj_in`, `attn1` / `attn2`
`to_q/k/v/out.0`, `ff.net.0.proj`, `ff.net.2`, `proj_out`) and, optionally, the text
encoder's attention and MLP projections.

The base weights are never written: the patched weights are passed to the frozen
module for one call with `torch.func.functional_call`, the mechanism generation uses
for LoRA too. File names come from the model's own name map (`networks.names.NameMap`)
read backwards, never from splitting names on underscores: SD1/SD2 layers get kohya's
diffusers-style names (`lora_unet_down_blocks_0_attentions_0_..._to_q`), SDXL layers the
LDM-style ones, text layers `lora_te_text_model_encoder_layers_N_...`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from modules.models.sd_model import StableDiffusionModel
from modules.networks.names import UNET, NameMap, Target, text_prefixes
from modules.nn.transformer import SpatialTransformer

TEXT_LAYER_ENDINGS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                      "self_attn.out_proj", "mlp.fc1", "mlp.fc2")


def unet_attention_paths(model: StableDiffusionModel) -> set[str]:
    """Paths of every Linear / Conv2d inside the U-Net's spatial transformers."""
    paths = set()
    for block_path, block in model.unet.named_modules():
        if isinstance(block, SpatialTransformer):
            paths |= {f"{block_path}.{path}" for path, module in block.named_modules()
                      if path and isinstance(module, (nn.Linear, nn.Conv2d))}
    return paths


def kohya_names(model: StableDiffusionModel, *, text_encoder: bool) -> dict[str, Target]:
    """kohya module name -> layer, for the layers a standard LoRA trains."""
    name_map = NameMap(model=model)
    by_layer: dict[tuple[str, str], list[str]] = {}
    for name, target in name_map.targets.items():
        by_layer.setdefault((target.component, target.path), []).append(name)
    chosen: dict[str, Target] = {}
    unet_paths = unet_attention_paths(model)
    for (component, path), names in by_layer.items():
        target = name_map.targets[names[0]]
        if component == UNET and path in unet_paths:
            chosen[_unet_name(path, names, sdxl=model.family.is_sdxl)] = target
        elif component != UNET and text_encoder and path.endswith(TEXT_LAYER_ENDINGS):
            index = [spec.name for spec in model.family.text_encoders].index(component)
            prefix = text_prefixes(index, len(model.family.text_encoders))[0]
            chosen[next(n for n in names if n.startswith(prefix))] = target
    return dict(sorted(chosen.items()))


def _unet_name(path: str, names: list[str], *, sdxl: bool) -> str:
    """SD1/SD2 kohya files use the diffusers spelling; SDXL ones the LDM spelling."""
    ldm = "lora_unet_" + path.replace(".", "_")
    diffusers = [n for n in names if n.startswith("lora_unet_") and n != ldm]
    return ldm if sdxl or not diffusers else diffusers[0]


class LoraNetwork(nn.Module):
    """down / up factors per layer (ParameterDicts keyed by kohya name), alpha per network."""

    def __init__(self, *, model: StableDiffusionModel, rank: int = 4, alpha: float = 1.0,
                 text_encoder: bool = False, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rank, self.alpha = rank, alpha
        self.targets = kohya_names(model, text_encoder=text_encoder)
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        for name, target in self.targets.items():
            out_features, in_features = target.weight_shape[0], target.weight_shape[1]
            extra = target.weight_shape[2:]  # (1, 1) for SD1's conv proj_in / proj_out
            down = torch.empty((rank, in_features, *extra))
            # kohya's init: down as nn.Linear's default (Kaiming uniform), up zero.
            bound = 1 / math.sqrt(in_features * math.prod(extra))
            self.down[name] = nn.Parameter(down.uniform_(-bound, bound, generator=generator))
            self.up[name] = nn.Parameter(torch.zeros((out_features, rank, *[1] * len(extra))))

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, name: str) -> torch.Tensor:
        up, down = self.up[name], self.down[name]
        product = up.flatten(1) @ down.flatten(1)
        return (product * self.scale).reshape(self.targets[name].weight_shape)

    def patched_weights(self, component: str, module: nn.Module) -> dict[str, torch.Tensor]:
        """{parameter path: W + delta} for this component's layers (differentiable)."""
        weights = dict(module.named_parameters())
        return {f"{t.path}.weight": weights[f"{t.path}.weight"] + self.delta(name)
                for name, t in self.targets.items() if t.component == component}

    def unet_call(self, unet: nn.Module) -> Callable[..., torch.Tensor]:
        """unet(x, t, context, ...) with this network applied."""
        def call(*args, **kwargs):
            return functional_call(unet, self.patched_weights(UNET, unet), args, kwargs)
        return call

    def text_encoder_call(self, component: str, encoder: nn.Module) -> "PatchedTextEncoder":
        return PatchedTextEncoder(encoder, lambda: self.patched_weights(component, encoder))

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` for every layer."""
        tensors = {}
        for name in self.targets:
            tensors[f"{name}.lora_down.weight"] = self.down[name].detach().to(dtype).contiguous()
            tensors[f"{name}.lora_up.weight"] = self.up[name].detach().to(dtype).contiguous()
            tensors[f"{name}.alpha"] = torch.tensor(self.alpha, dtype=dtype)
        return tensors


@dataclass(frozen=True)
class PatchedTextEncoder:
    """A `TextEncoder` stand-in for `encode_chunks`: same attributes, patched weights."""

    encoder: nn.Module
    weights: Callable[[], dict[str, torch.Tensor]]

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.encoder.token_embedding

    @property
    def config(self):
        return self.encoder.config

    def parameters(self):
        """The base encoder's parameters (where it computes: `devices.execution_device`)."""
        return self.encoder.parameters()

    def __call__(self, *args, **kwargs):
        return functional_call(self.encoder, self.weights(), args, kwargs)
