"""CLIP text encoders (Radford et al., 2021) as Stable Diffusion uses them.

The networks are transformers' `CLIPTextModel` / `CLIPTextModelWithProjection`, built
from our `TextEncoderConfig` without touching the hub. `TextEncoder` wraps one and
returns what the U-Net is conditioned on:

* `hidden`: the hidden state after `config.layer` (-1 last, -2 penultimate) transformer
  layers, through `final_layer_norm` iff `config.final_norm`. SD1 uses the last layer
  with the norm; SD2 (OpenCLIP ViT-H) the penultimate with the norm; SDXL the
  penultimate without it, for both its encoders.
* `pooled` (only when `config.output_pooled`, SDXL bigG): `final_layer_norm` of the last
  layer at the EOS position (the arg-max id, as OpenCLIP pools), times `text_projection`.

Clip skip N (A1111's "Clip skip") selects `hidden_states[-N]` instead, then applies
`final_layer_norm` iff `config.final_norm`. SD2 checkpoints hold 24 resblocks; all 24 are
loaded and the 24th is simply not run (layer -2), so a pooled output stays possible.

The layers are run one by one here rather than through the HF `forward`, so that we can
stop at the layer we need and feed token embeddings with textual-inversion vectors
spliced in (`inputs_embeds`). Positions are always `arange(T)`: checkpoints' own
`position_ids` are never loaded (merged files carry broken ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from modules.nn.configs import TextEncoderConfig
from modules.nn.text_encoder_keys import ConvertedWeights, convert_text_encoder_weights

BOS_ID = 49406
EOS_ID = 49407


def hf_clip_config(config: TextEncoderConfig):
    """transformers' `CLIPTextConfig` for our config (no hub, no files)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        projection_dim=config.projection_dim or config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        max_position_embeddings=config.max_positions,
        hidden_act=config.hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        pad_token_id=EOS_ID if config.pad_with_eos else 0,
        attn_implementation="sdpa",
    )


@dataclass(frozen=True)
class TextEncoderOutput:
    """hidden: (B, T, C) cross-attention context; pooled: (B, P) or None."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None


@dataclass(frozen=True)
class LoadReport:
    """What a checkpoint load left out: known extras, unknown keys, unfilled parameters."""

    ignored: tuple[str, ...]
    unknown: tuple[str, ...]
    missing: tuple[str, ...]


class TextEncoderLoadError(ValueError):
    """A text-encoder state dict that does not fit the configured network."""


class TextEncoder(nn.Module):
    """One CLIP text tower: ids (B, 77) -> `TextEncoderOutput`."""

    def __init__(self, *, config: TextEncoderConfig, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        self.config = config
        hf_config = hf_clip_config(config)
        # Build straight on the target device (or the ambient default device, so that
        # `with torch.device("meta")` around us builds without memory).
        with torch.device(device or torch.get_default_device()):
            model_class = CLIPTextModelWithProjection if config.projection_dim else CLIPTextModel
            self.transformer = model_class(hf_config)
        if dtype is not None:
            self.transformer.to(dtype)

    # ---- parts ------------------------------------------------------------------------

    @property
    def text_model(self) -> nn.Module:
        """The `CLIPTextModel` (embeddings, encoder, final_layer_norm)."""
        return getattr(self.transformer, "text_model", self.transformer)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.text_model.embeddings.token_embedding

    @property
    def num_layers(self) -> int:
        return len(self.text_model.encoder.layers)

    # ---- weights ----------------------------------------------------------------------

    def convert(self, state_dict: dict[str, torch.Tensor]) -> ConvertedWeights:
        """Checkpoint names (family prefix stripped) -> names of `self.transformer`."""
        return convert_text_encoder_weights(state_dict, config=self.config)

    def load_checkpoint_weights(self, state_dict: dict[str, torch.Tensor], *,
                                strict: bool = True, assign: bool = False) -> LoadReport:
        """Load an LDM / OpenCLIP / diffusers text-encoder state dict.

        With `strict`, unknown keys or unfilled parameters raise `TextEncoderLoadError`
        naming them; known extras (see `text_encoder_keys`) are only reported.
        """
        converted = self.convert(state_dict)
        expected = set(self.transformer.state_dict())
        missing = tuple(sorted(expected - set(converted.tensors)))
        unexpected = tuple(sorted(set(converted.tensors) - expected))
        report = LoadReport(converted.ignored, converted.unknown + unexpected, missing)
        if strict and (report.unknown or report.missing):
            raise TextEncoderLoadError(
                f"text encoder weights do not fit: unknown keys {list(report.unknown[:8])}, "
                f"missing parameters {list(report.missing[:8])}"
            )
        tensors = {k: v for k, v in converted.tensors.items() if k in expected}
        self.transformer.load_state_dict(tensors, strict=False, assign=assign)
        self._rebuild_position_ids()
        return report

    def _rebuild_position_ids(self) -> None:
        """HF's unused `position_ids` buffer stays on "meta" after an assign-load; renew it
        beside the weights so that `.to(device)` works."""
        embeddings = self.text_model.embeddings
        weight = self.token_embedding.weight
        if embeddings.position_ids.is_meta and not weight.is_meta:
            length = embeddings.position_ids.shape[-1]
            embeddings.position_ids = torch.arange(length, device=weight.device)[None]

    # ---- forward ----------------------------------------------------------------------

    def forward(self, input_ids: torch.Tensor, *, clip_skip: int | None = None,
                inputs_embeds: torch.Tensor | None = None) -> TextEncoderOutput:
        """Encode ids (B, T); `inputs_embeds` (B, T, C) replaces the token embeddings.

        `clip_skip` None uses `config.layer`; N >= 1 uses `hidden_states[-N]`.
        """
        layer_count = self.hidden_layer_count(clip_skip)
        run_all = self.config.output_pooled
        states = self.run_layers(input_ids, inputs_embeds,
                                 self.num_layers if run_all else layer_count)
        norm = self.text_model.final_layer_norm
        hidden = states[layer_count]
        if self.config.final_norm:
            hidden = norm(hidden)
        pooled = self.pool(norm(states[-1]), input_ids) if run_all else None
        return TextEncoderOutput(hidden, pooled)

    def hidden_layer_count(self, clip_skip: int | None) -> int:
        """How many transformer layers feed the returned hidden state."""
        index = self.config.layer if clip_skip is None else -clip_skip
        if clip_skip is not None and not 1 <= clip_skip <= self.num_layers:
            raise ValueError(f"clip_skip must be in 1..{self.num_layers}, got {clip_skip}")
        return self.num_layers + 1 + index

    def run_layers(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None,
                   count: int) -> list[torch.Tensor]:
        """[embeddings, after layer 1, ..., after layer `count`] (HF `hidden_states`)."""
        text_model = self.text_model
        length = input_ids.shape[-1]
        positions = torch.arange(length, device=input_ids.device).unsqueeze(0)
        x = text_model.embeddings(input_ids=None if inputs_embeds is not None else input_ids,
                                  position_ids=positions, inputs_embeds=inputs_embeds)
        mask = causal_mask(length, dtype=x.dtype, device=x.device)
        states = [x]
        for layer in text_model.encoder.layers[:count]:
            x = layer(x, mask)
            states.append(x)
        return states

    def pool(self, normed_last: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """The EOS token's state (arg-max id, as OpenCLIP), projected when configured."""
        rows = torch.arange(normed_last.shape[0], device=normed_last.device)
        pooled = normed_last[rows, input_ids.to(normed_last.device).argmax(dim=-1)]
        if self.config.projection_dim is not None:
            pooled = self.transformer.text_projection(pooled)
        return pooled


def causal_mask(length: int, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive (1, 1, T, T) mask: a token attends to itself and earlier tokens only."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    mask = torch.zeros(length, length, dtype=dtype, device=device)
    return mask.masked_fill(blocked, torch.finfo(dtype).min)[None, None]
