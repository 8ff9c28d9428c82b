"""Which family a checkpoint belongs to, from its keys and shapes only (no tensor data).

Order (docs/model-formats.md, "Family detection"): refuse architectures this U-Net path does
not run (SD3 and Flux load through `flow_detection.py` / `flow_loader.py`; EDM, ...),
classify the U-Net by the numbers its shapes show (model channels, cross-attention width,
linear or conv `proj_in`, ADM input width), check its block structure against the
declared config, find each text encoder (LDM prefix, or a diffusers folder's
`text_encoder/` names) and check its width against the U-Net's context, then read the
input channels (4, or 9 for inpainting) and the prediction type.

Prediction type, first that applies: the caller's override; a `v_pred` key;
metadata (`prediction_type` from a diffusers scheduler config, modelspec
`modelspec.prediction_type` / `modelspec.architecture`); for SD2, `global_step`
875000 (the 512-base release) means eps; otherwise SD2 defaults to v-prediction,
because the common SD2.x release (2.0/2.1 768-v) is v and an eps model sampled as v
gives obviously broken images the user can override, and SD2 inpainting is always eps.
A1111's test forward pass and ComfyUI's `norm1.bias` std rule both need real weights
and say nothing on random fixtures; they are deliberately not used here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from modules.models.errors import ModelLoadError
from modules.models.families import (
    SD2,
    SD2_V,
    SD15,
    SDXL,
    SDXL_REFINER,
    UNET_PREFIX,
    VAE_PREFIX,
    Family,
    Prediction,
    TextEncoderSpec,
)
from modules.models.family_metadata import family_from_metadata
from modules.models.safetensors_io import TensorInfo

NOT_HERE = "is not supported here (SD1/SD2/SDXL only)"
# Marker key (or key fragment) -> why we refuse the file.
UNSUPPORTED_MARKERS: tuple[tuple[str, str], ...] = (
    # Flow models load through `flow_loader.py` (the model manager); not here.
    ("model.diffusion_model.x_embedder.proj.weight", f"Stable Diffusion 3 {NOT_HERE}"),
    ("joint_blocks.", f"Stable Diffusion 3 (MMDiT) {NOT_HERE}"),
    ("double_blocks.", f"Flux {NOT_HERE}"),
    ("single_blocks.", f"Flux {NOT_HERE}"),
    ("edm_mean", "EDM models (Playground 2.5) are not supported"),
    ("edm_vpred.sigma_max", "EDM v-prediction models are not supported"),
    ("depth_model.", "SD2 depth-to-image is not supported"),
    ("embedder.model.ln_final.weight", "SD2 unCLIP is not supported"),
    ("cond_stage_model.roberta.", "AltDiffusion is not supported"),
    ("control_model.", "this is a ControlNet, not a checkpoint"),
    ("lora_unet_", "this is a LoRA, not a checkpoint"),
    ("lora_te_", "this is a LoRA, not a checkpoint"),
    ("lora_te1_", "this is a LoRA, not a checkpoint"),
)
BASE_FAMILIES: tuple[Family, ...] = (SD15, SD2, SDXL, SDXL_REFINER)
SD2_BASE_GLOBAL_STEP = 875000  # global_step of the eps 512-base release (diffusers' rule)


@dataclass(frozen=True)
class UNetSignature:
    """The architecture numbers that U-Net shapes reveal."""

    in_channels: int
    model_channels: int
    context_dim: int | None
    linear_proj: bool
    adm_in_channels: int | None


def detect_family(
    header: Mapping[str, TensorInfo],
    metadata: Mapping[str, object] | None = None,
    *,
    prediction: Prediction | None = None,
    path: str = "<checkpoint>",
) -> Family:
    """The declared family of a full checkpoint (U-Net + VAE + text encoders)."""
    metadata = metadata or {}
    reject_unsupported(header, path=path)
    signature = unet_signature(header, path=path)
    declared = family_from_metadata(metadata, path=path)
    family = declared or _match_base_family(signature, path)
    check_unet_structure(header, family, path=path)
    _require(header, VAE_PREFIX + "decoder.conv_out.weight",
             "no VAE weights (first_stage_model.*)", path)
    family = _locate_text_encoders(header, family, signature, path)
    if signature.in_channels == 9:
        family = family.as_inpainting()
    elif signature.in_channels != 4:
        raise ModelLoadError(path, f"unsupported U-Net input channels {signature.in_channels} "
                                   "(8 is InstructPix2Pix)")
    if declared is None:
        family = _with_prediction(family, header, metadata, prediction)
    elif prediction is not None:
        family = family.with_prediction(prediction)
    if "ztsnr" in header or _truthy(metadata.get("ztsnr")):
        family = replace(family, zero_terminal_snr=True)
    return family


def reject_unsupported(header: Mapping[str, TensorInfo], *, path: str) -> None:
    """Raise `ModelLoadError` if any key marks an architecture we do not run."""
    for key in header:
        for marker, reason in UNSUPPORTED_MARKERS:
            if key.startswith(marker) or ("." + marker) in key:
                raise ModelLoadError(path, f"{reason} (found {key!r})")


def unet_signature(header: Mapping[str, TensorInfo], *, path: str) -> UNetSignature:
    conv_in = header.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in.shape) != 4:
        reason = "no U-Net weights (model.diffusion_model.input_blocks.0.0.weight)"
        if any(key.startswith(("input_blocks.", "down_blocks.", "conv_in.")) for key in header):
            reason = "a U-Net-only file; a checkpoint needs U-Net, VAE and text encoders"
        raise ModelLoadError(path, reason)
    to_k = next((info for key, info in header.items() if key.startswith(UNET_PREFIX)
                 and key.endswith("transformer_blocks.0.attn2.to_k.weight")), None)
    proj_in = next((info for key, info in header.items() if key.startswith(UNET_PREFIX)
                    and key.endswith(".1.proj_in.weight")), None)
    label_emb = header.get(UNET_PREFIX + "label_emb.0.0.weight")
    return UNetSignature(
        in_channels=conv_in.shape[1],
        model_channels=conv_in.shape[0],
        context_dim=to_k.shape[1] if to_k else None,
        linear_proj=proj_in is not None and len(proj_in.shape) == 2,
        adm_in_channels=label_emb.shape[1] if label_emb else None,
    )


def _match_base_family(signature: UNetSignature, path: str) -> Family:
    for family in BASE_FAMILIES:
        unet = family.unet
        if (signature.model_channels, signature.context_dim, signature.linear_proj,
                signature.adm_in_channels) == (unet.model_channels, unet.context_dim,
                                               unet.use_linear_in_transformer,
                                               unet.adm_in_channels):
            return family
    raise ModelLoadError(
        path,
        f"unknown U-Net layout (model_channels={signature.model_channels}, "
        f"context_dim={signature.context_dim}, linear proj_in={signature.linear_proj}, "
        f"adm_in_channels={signature.adm_in_channels})",
    )


def check_unet_structure(header: Mapping[str, TensorInfo], family: Family, *, path: str) -> None:
    """Every level's blocks and transformer depth must be those the family declares."""
    unet = family.unet
    block = 1
    for level, depth in enumerate(unet.transformer_depth):
        for _ in range(unet.num_res_blocks):
            _check_depth(header, f"input_blocks.{block}.1.", depth, family, path)
            block += 1
        if level < len(unet.channel_mult) - 1:
            _require(header, UNET_PREFIX + f"input_blocks.{block}.0.op.weight",
                     f"U-Net does not match {family.label} (no downsample at input_blocks.{block})",
                     path)
            block += 1
    if any(key.startswith(UNET_PREFIX + f"input_blocks.{block}.") for key in header):
        raise ModelLoadError(path, f"U-Net has more input blocks than {family.label}")
    _check_depth(header, "middle_block.1.", unet.transformer_depth_middle, family, path)
    _require(header, UNET_PREFIX + "out.2.weight", "partial U-Net (no out.2.weight)", path)


def _check_depth(header: Mapping[str, TensorInfo], block: str, depth: int, family: Family,
                 path: str) -> None:
    prefix = UNET_PREFIX + block + "transformer_blocks."
    has_last = depth == 0 or (prefix + f"{depth - 1}.attn2.to_k.weight") in header
    has_extra = (prefix + f"{depth}.attn2.to_k.weight") in header
    if not has_last or has_extra:
        raise ModelLoadError(
            path, f"U-Net transformer depth at {block.rstrip('.')} does not match {family.label} "
                  f"(expected {depth}); a distilled or partial variant?",
        )


def diffusers_text_encoder_prefixes(family: Family) -> tuple[str, ...]:
    """Where a diffusers folder's text encoders sit in our header, one per family encoder."""
    if family.adm == "sdxl_refiner":
        return ("text_encoder_2.",)
    return ("text_encoder.", "text_encoder_2.")[: len(family.text_encoders)]


def _locate_text_encoders(header: Mapping[str, TensorInfo], family: Family,
                          signature: UNetSignature, path: str) -> Family:
    specs = [
        _locate_one(header, spec, hf_prefix, path)
        for spec, hf_prefix in zip(family.text_encoders, diffusers_text_encoder_prefixes(family))
    ]
    total_width = sum(spec.config.hidden_size for spec in specs)
    if signature.context_dim != total_width:
        raise ModelLoadError(path, f"text encoder width {total_width} does not match the U-Net "
                                   f"context dim {signature.context_dim}: a mixed or partial file?")
    return replace(family, text_encoders=tuple(specs))


def _locate_one(header: Mapping[str, TensorInfo], spec: TextEncoderSpec, hf_prefix: str,
                path: str) -> TextEncoderSpec:
    """The spec, with its prefix (and layout) moved to where this file keeps the weights."""
    config = spec.config
    if config.source_layout == "open_clip":
        candidates = [spec.prefix]
        if spec.prefix == "cond_stage_model.model.":  # SD2.1-turbo's SGM packaging
            candidates.append("conditioner.embedders.0.model.")
        for prefix in candidates:
            width = _width(header, prefix + "token_embedding.weight")
            if width is not None:
                _check_width(width, spec, path)
                return replace(spec, prefix=prefix)
    else:
        width = _width(header, spec.prefix + "text_model.embeddings.token_embedding.weight")
        if width is not None:
            _check_width(width, spec, path)
            return spec
    return _locate_hf(header, spec, hf_prefix, path)


def _locate_hf(header: Mapping[str, TensorInfo], spec: TextEncoderSpec, hf_prefix: str,
               path: str) -> TextEncoderSpec:
    """A diffusers text encoder: transformers names, maybe one layer fewer (SD2's 23)."""
    width = _width(header, hf_prefix + "text_model.embeddings.token_embedding.weight")
    if width is None:
        raise ModelLoadError(path, f"no {spec.name} text encoder weights "
                                   f"(looked for {spec.prefix}* and {hf_prefix}*)")
    _check_width(width, spec, path)
    layers = _count_layers(header, hf_prefix + "text_model.encoder.layers.")
    config = replace(spec.config, source_layout="clip_l", num_layers=layers)
    if layers == spec.config.num_layers - 1 and spec.config.layer == -2:
        config = replace(config, layer=-1)  # the penultimate layer is now the last one
    return replace(spec, prefix=hf_prefix, config=config)


def _width(header: Mapping[str, TensorInfo], key: str) -> int | None:
    info = header.get(key)
    return info.shape[1] if info is not None and len(info.shape) == 2 else None


def _check_width(width: int, spec: TextEncoderSpec, path: str) -> None:
    if width != spec.config.hidden_size:
        raise ModelLoadError(path, f"{spec.name} text encoder has width {width}, "
                                   f"expected {spec.config.hidden_size}")


def _count_layers(header: Mapping[str, TensorInfo], prefix: str) -> int:
    indices = {key[len(prefix):].split(".", 1)[0] for key in header if key.startswith(prefix)}
    return len([index for index in indices if index.isdigit()])


def _with_prediction(family: Family, header: Mapping[str, TensorInfo],
                     metadata: Mapping[str, object], override: Prediction | None) -> Family:
    prediction = override or _declared_prediction(header, metadata)
    if prediction is None and family.name == SD2.name:
        if metadata.get("global_step") == SD2_BASE_GLOBAL_STEP:
            prediction = "eps"
        else:
            return replace(SD2_V, text_encoders=family.text_encoders)  # 768-v: see docstring
    if prediction == "v" and family.name == SD2.name:
        return replace(SD2_V, text_encoders=family.text_encoders)
    return family.with_prediction(prediction) if prediction else family


def _declared_prediction(header: Mapping[str, TensorInfo],
                         metadata: Mapping[str, object]) -> Prediction | None:
    if "v_pred" in header:
        return "v"
    declared = str(metadata.get("prediction_type")
                   or metadata.get("modelspec.prediction_type") or "")
    if declared.lower() in ("v", "v_prediction", "v-prediction"):
        return "v"
    if declared.lower() in ("eps", "epsilon"):
        return "eps"
    architecture = str(metadata.get("modelspec.architecture") or "")
    if architecture.endswith("-v") or "768-v" in architecture:
        return "v"
    return None


def _require(header: Mapping[str, TensorInfo], key: str, reason: str, path: str) -> None:
    if key not in header:
        raise ModelLoadError(path, reason)


def _truthy(value: object) -> bool:
    return value is True or str(value).lower() in ("true", "1", "yes")
