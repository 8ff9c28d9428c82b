"""IP-Adapter files and the CLIP image encoders they read, loaded safely and offline.

IP-Adapter files (Ye et al., 2023; `h94/IP-Adapter`: `ip-adapter_sd15`,
`ip-adapter-plus_sd15`, `ip-adapter-plus-face_sd15`, `ip-adapter_sdxl_vit-h`,
`ip-adapter-plus_sdxl_vit-h`) come as

- `.safetensors` with flat names `image_proj.*` and `ip_adapter.<n>.to_k_ip.weight` /
  `ip_adapter.<n>.to_v_ip.weight` (n = 1, 3, 5, ...: diffusers' attention-processor
  slots, the attn1 slots in between hold nothing);
- `.bin`: a torch pickle of `{"image_proj": {...}, "ip_adapter": {...}}`, read through
  the allow-listed unpickler (`modules.models.safe_unpickle`), never plain pickle.

The architecture comes from the shapes (`modules.nn.ip_adapter.IPAdapterConfig`) and is
checked against the loaded U-Net (context width, number and width of attn2 layers), so a
file for another base model is one `ModelLoadError` naming it.

Image encoders live in `models/clip_vision/` (A1111 / Forge's folder) as transformers
`CLIPVisionModelWithProjection` state dicts (`vision_model.*`, `visual_projection.weight`).
`find_clip_vision` picks the one whose output fits the adapter (ViT-H: image_embeds 1024,
hidden 1280; bigG: 1280 / 1664; any other size, such as the demo's small encoder);
`load_clip_vision` builds the model from the shapes alone (no hub call, no config file).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from modules.models.errors import ModelLoadError
from modules.models.safe_unpickle import load_pickle_checkpoint
from modules.models.single_file import file_format, load_file, read_file_header
from modules.nn.configs import UNetConfig
from modules.nn.ip_adapter import IPAdapter, IPAdapterConfig, cross_attention_layers

CLIP_VISION_FOLDER = Path("models/clip_vision")
ENCODER_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
_LAYER_KEY = re.compile(r"^ip_adapter\.(\d+)\.to_([kv])_ip\.weight$")
_RESAMPLER_LAYER = re.compile(r"^image_proj\.layers\.(\d+)\.")
_ENCODER_LAYER = re.compile(r"^vision_model\.encoder\.layers\.(\d+)\.")
# Heads of the known wide encoders (OpenCLIP ViT-H/14: 16 x 80, ViT-bigG/14: 16 x 104);
# other widths get heads of 64 channels unless the file's metadata says otherwise.
_KNOWN_HEADS = {1280: 16, 1664: 16}

Shapes = Mapping[str, tuple[int, ...]]


def is_ip_adapter(keys: Iterable[str]) -> bool:
    """Whether these tensor names are an IP-Adapter's (`image_proj.*` and `ip_adapter.*`)."""
    names = list(keys)
    return (any(k.startswith("image_proj.") for k in names)
            and any(k.startswith("ip_adapter.") for k in names))


def _read_tensors(path: str, dtype: torch.dtype | None,
                  device: str | torch.device) -> dict[str, torch.Tensor]:
    """Flat `image_proj.` / `ip_adapter.` names -> tensors, from either container."""
    if file_format(path) == "safetensors":
        return load_file(path, dtype=dtype, device=device)
    data = load_pickle_checkpoint(path)
    if not isinstance(data, Mapping) or not all(
            isinstance(data.get(group), Mapping) for group in ("image_proj", "ip_adapter")):
        raise ModelLoadError(path, "not an IP-Adapter (expected a pickle of "
                                   "{'image_proj': ..., 'ip_adapter': ...})")
    tensors: dict[str, torch.Tensor] = {}
    for group in ("image_proj", "ip_adapter"):
        for name, tensor in data[group].items():
            if not isinstance(tensor, torch.Tensor):
                raise ModelLoadError(path, f"{group}.{name} is not a tensor")
            target = dtype if dtype is not None and tensor.is_floating_point() else tensor.dtype
            tensors[f"{group}.{name}"] = tensor.to(device=device, dtype=target)
    return tensors


def infer_ip_adapter_config(shapes: Shapes, *, path: str) -> IPAdapterConfig:
    """The adapter's architecture from its tensor shapes; `ModelLoadError` if it is none."""
    if not is_ip_adapter(shapes):
        raise ModelLoadError(path, "not an IP-Adapter (no image_proj.* / ip_adapter.* tensors)")
    layers: dict[int, dict[str, tuple[int, ...]]] = {}
    for name, shape in shapes.items():
        match = _LAYER_KEY.match(name)
        if match:
            layers.setdefault(int(match[1]), {})[match[2]] = shape
        elif name.startswith("ip_adapter."):
            raise ModelLoadError(path, f"unexpected IP-Adapter tensor {name!r}")
    slots = sorted(layers)
    if slots != [2 * i + 1 for i in range(len(slots))] or any(
            set(pair) != {"k", "v"} or len(pair["k"]) != 2 or pair["k"] != pair["v"]
            for pair in layers.values()):
        raise ModelLoadError(path, f"damaged IP-Adapter: attention slots {slots} are not "
                                   f"1, 3, 5, ... each with to_k_ip and to_v_ip of one shape")
    context = layers[1]["k"][1]
    widths = tuple(layers[slot]["k"][0] for slot in slots)
    if "image_proj.proj.weight" in shapes and "image_proj.norm.weight" in shapes:
        rows, image_dim = _shape(shapes, "image_proj.proj.weight", 2, path)
        if rows % context:
            raise ModelLoadError(path, f"image_proj.proj gives {rows} values, not a multiple "
                                       f"of the context width {context}")
        return IPAdapterConfig(kind="plain", image_dim=image_dim, context_dim=context,
                               n_tokens=rows // context, layer_widths=widths)
    if "image_proj.latents" in shapes:
        _, n_tokens, width = _shape(shapes, "image_proj.latents", 3, path)
        depth = len({int(m[1]) for name in shapes if (m := _RESAMPLER_LAYER.match(name))})
        inner = _shape(shapes, "image_proj.layers.0.0.to_q.weight", 2, path)[0]
        image_dim = _shape(shapes, "image_proj.proj_in.weight", 2, path)[1]
        out = _shape(shapes, "image_proj.proj_out.weight", 2, path)[0]
        if out != context:
            raise ModelLoadError(path, f"image_proj makes {out}-wide tokens but the attention "
                                       f"layers take {context}")
        return IPAdapterConfig(kind="plus", image_dim=image_dim, context_dim=context,
                               n_tokens=n_tokens, layer_widths=widths, resampler_width=width,
                               resampler_depth=depth, resampler_heads=inner // 64)
    raise ModelLoadError(path, "unsupported IP-Adapter kind (only the plain and plus "
                               "projections: ip-adapter_*, ip-adapter-plus*_*)")


def _shape(shapes: Shapes, name: str, rank: int, path: str) -> tuple[int, ...]:
    shape = shapes.get(name)
    if shape is None or len(shape) != rank:
        raise ModelLoadError(path, f"damaged IP-Adapter: {name} missing or not rank {rank}")
    return tuple(shape)


def _family(config: UNetConfig) -> str:
    return "SDXL" if config.adm_in_channels is not None else (
        "SD2" if config.use_linear_in_transformer else "SD1")


def check_base(config: IPAdapterConfig, base: UNetConfig, *, path: str) -> None:
    """`ModelLoadError` unless the adapter's attention layers fit this U-Net's attn2 layers."""
    widths = tuple(width for _, width in cross_attention_layers(base))
    if config.context_dim != base.context_dim or config.layer_widths != widths:
        raise ModelLoadError(
            path, f"this IP-Adapter is for another base model (context width "
                  f"{config.context_dim}, {len(config.layer_widths)} attention layers) but "
                  f"the loaded model is {_family(base)} (context width {base.context_dim}, "
                  f"{len(widths)} attention layers)")


def adapter_state_from_file(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """File names -> `IPAdapter` state-dict names (`ip_adapter.<2i+1>.` -> `layers.<i>.`)."""
    state = {}
    for name, tensor in tensors.items():
        match = _LAYER_KEY.match(name)
        if match:
            state[f"layers.{(int(match[1]) - 1) // 2}.to_{match[2]}_ip.weight"] = tensor
        else:
            state[name] = tensor
    return state


def adapter_state_to_file(adapter: IPAdapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the file's names (what `load_ip_adapter` reads)."""
    out = {}
    for name, tensor in adapter.state_dict().items():
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            name = f"ip_adapter.{2 * int(index) + 1}.{rest}"
        out[name] = tensor
    return out


def load_ip_adapter(path: str | os.PathLike[str], *, base: UNetConfig,
                    device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32) -> IPAdapter:
    """A ready `IPAdapter` (eval, no grad) for the U-Net `base`; `ModelLoadError` naming
    the file for a wrong base model, an unknown kind or a damaged file."""
    path = os.fspath(path)
    if file_format(path) == "safetensors":  # shapes first: no data read for a wrong file
        header = read_file_header(path)
        config = infer_ip_adapter_config({k: tuple(v.shape) for k, v in header.tensors.items()},
                                         path=path)
        check_base(config, base, path=path)
    tensors = _read_tensors(path, dtype, device)
    config = infer_ip_adapter_config({k: tuple(v.shape) for k, v in tensors.items()}, path=path)
    check_base(config, base, path=path)
    with torch.device("meta"):
        adapter = IPAdapter(config=config, base=base)
    try:
        adapter.load_state_dict(adapter_state_from_file(tensors), strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLoadError(path, f"damaged IP-Adapter: weights do not fit the inferred "
                                   f"architecture: {str(error)[:400]}") from None
    return adapter.eval().requires_grad_(False)


def needed_encoder_size(adapter: IPAdapter) -> tuple[str, int]:
    """(which output, its width) that the adapter reads from its image encoder."""
    what = "hidden size" if adapter.uses_hidden_states else "image_embeds size"
    return what, adapter.config.image_dim


def encoder_sizes(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(image_embeds width, hidden width) of a CLIP vision file, from its header."""
    shapes = {k: tuple(v.shape) for k, v in read_file_header(path).tensors.items()}
    projection = shapes.get("visual_projection.weight")
    hidden = shapes.get("vision_model.embeddings.class_embedding")
    if projection is None or hidden is None or len(projection) != 2:
        raise ModelLoadError(path, "not a CLIP vision model with projection "
                                   "(no visual_projection / vision_model weights)")
    return projection[0], hidden[0]


def find_clip_vision(folder: str | os.PathLike[str] | None, adapter: IPAdapter) -> Path:
    """The image encoder in `folder` (default `models/clip_vision`) whose output fits."""
    folder = Path(folder) if folder is not None else CLIP_VISION_FOLDER
    what, size = needed_encoder_size(adapter)
    candidates = sorted(p for p in folder.glob("*") if p.suffix.lower() in ENCODER_SUFFIXES
                        and p.is_file()) if folder.is_dir() else []
    for candidate in candidates:
        try:
            embeds, hidden = encoder_sizes(candidate)
        except ModelLoadError:
            continue  # not an image encoder (or damaged): others may fit
        if (hidden if adapter.uses_hidden_states else embeds) == size:
            return candidate
    hint = {1024: " (ViT-H/14)", 1280: " (ViT-H/14)" if what == "hidden size" else
            " (ViT-bigG/14)", 1664: " (ViT-bigG/14)"}.get(size, "")
    raise ModelLoadError(folder, f"no CLIP image encoder for this IP-Adapter in "
                                 f"models/clip_vision ({folder}): it needs a "
                                 f"CLIPVisionModelWithProjection file with {what} {size}{hint}")


def clip_vision_config(shapes: Shapes, metadata: Mapping[str, object], *, path: str):
    """transformers `CLIPVisionConfig` from the state dict's shapes (+ optional metadata)."""
    from transformers import CLIPVisionConfig

    try:
        hidden = shapes["vision_model.embeddings.class_embedding"][0]
        patch = shapes["vision_model.embeddings.patch_embedding.weight"][-1]
        channels = shapes["vision_model.embeddings.patch_embedding.weight"][1]
        positions = shapes["vision_model.embeddings.position_embedding.weight"][0]
        intermediate = shapes["vision_model.encoder.layers.0.mlp.fc1.weight"][0]
        projection = shapes["visual_projection.weight"][0]
    except (KeyError, IndexError) as error:
        raise ModelLoadError(path, f"not a CLIP vision model: {error} missing") from None
    layers = len({int(m[1]) for name in shapes if (m := _ENCODER_LAYER.match(name))})
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ModelLoadError(path, f"{positions} position embeddings are not a square grid + 1")
    heads = int(str(metadata.get("num_attention_heads",
                                 _KNOWN_HEADS.get(hidden, max(1, hidden // 64)))))
    # OpenAI's ViT-L/14 uses quick_gelu; OpenCLIP's ViT-H / bigG and others plain gelu.
    default_act = "quick_gelu" if (hidden, layers, patch) == (1024, 24, 14) else "gelu"
    return CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=intermediate, projection_dim=projection,
        num_hidden_layers=layers, num_attention_heads=heads, num_channels=channels,
        image_size=grid * patch, patch_size=patch,
        hidden_act=str(metadata.get("hidden_act", default_act)),
        layer_norm_eps=float(str(metadata.get("layer_norm_eps", 1e-5))))


def load_clip_vision(path: str | os.PathLike[str], *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32):
    """transformers `CLIPVisionModelWithProjection` (eval, no grad) from a state dict file,
    configured from its shapes: offline, no hub call, no config.json."""
    from transformers import CLIPVisionModelWithProjection

    path = os.fspath(path)
    header = read_file_header(path)
    shapes = {k: tuple(v.shape) for k, v in header.tensors.items()}
    config = clip_vision_config(shapes, header.metadata, path=path)
    tensors = load_file(path, dtype=dtype, device=device)
    tensors.pop("vision_model.embeddings.position_ids", None)  # a buffer, rebuilt below
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(config)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise ModelLoadError(path, f"weights do not fit the inferred CLIP vision model: "
                                   f"{str(error)[:400]}") from None
    embeddings = model.vision_model.embeddings
    embeddings.register_buffer("position_ids",
                               torch.arange(embeddings.num_positions, device=device)[None],
                               persistent=False)
    leftover = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
                if t.is_meta]
    if leftover:
        raise ModelLoadError(path, f"CLIP vision model left without weights: {leftover[:3]}")
    return model.eval().requires_grad_(False)
