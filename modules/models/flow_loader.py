"""Planning the load of an SD3 / SD3.5 / Flux.1 model: which file holds each part, and how.

A model comes as one of:

* a single file with everything (ComfyUI / Forge / SAI all-in-one files),
* a diffusion-model file (BFL's `flux1-dev.safetensors`, SAI's SD3.5 files with their
  VAE, a `.gguf` quantization) plus separate text encoders and VAE in their folders
  (`flow_parts.py`),
* a diffusers folder (`model_index.json` naming `StableDiffusion3Pipeline` or
  `FluxPipeline`, with `transformer/`, `vae/`, `text_encoder*/`), renamed to the
  reference names by `sd3_keys` / `flux_keys` / `diffusers_keys`; a diffusers-named
  transformer saved as one file (bare or under `transformer.`) is renamed the same way.

`plan_flow_checkpoint` reads headers only and returns a `FlowPlan`: the family (every
config read off the shapes) and, for each part, a `Source` that reads its tensors later
(`flow_model.assemble_flow_model`). Anything that is not a flow model gives None, so
the SD1/SD2/SDXL path handles it; a flow model that cannot be completed is one
`ModelLoadError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from modules.models.diffusers_folder import (
    MODEL_INDEX,
    component_weight_files,
    read_json,
    vae_config_from_diffusers,
)
from modules.models.diffusers_keys import UnmappedKeysError, vae_diffusers_to_ldm
from modules.models.errors import ModelLoadError
from modules.models.flow_detection import (
    CLIP_HEADS_KEY,
    detect_flow,
    encoder_config,
    shapes_under,
    vae_config,
    with_declared_heads,
)
from modules.models.flow_families import FlowFamily
from modules.models.flow_parts import PartFile, list_parts, pick_parts, resolve_modules
from modules.models.flux_keys import diffusers_to_bfl
from modules.models.gguf_io import is_gguf, read_gguf_header
from modules.models.safetensors_io import TensorInfo
from modules.models.sd3_keys import diffusers_to_sai
from modules.models.single_file import load_file, read_file_header

DIFFUSION = "diffusion"
VAE = "vae"
# Our prefixes for the parts of a diffusers folder, as if it were one all-in-one file.
FOLDER_PREFIXES = {"transformer": "model.diffusion_model.", "vae": "first_stage_model."}
FOLDER_ENCODERS = {
    "StableDiffusion3Pipeline": {"text_encoder": "clip_l", "text_encoder_2": "clip_g",
                                 "text_encoder_3": "t5xxl"},
    "FluxPipeline": {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"},
}


@dataclass(frozen=True)
class Source:
    """Where one part's tensors are: keys under `prefix` of one file, or a diffusers
    component's files; `convert` renames diffusers names to the reference ones."""

    path: str
    prefix: str = ""
    keys: tuple[str, ...] = ()  # names without the prefix
    float8: bool = False  # some tensors are stored in float8 (kept low-bit when loaded)
    files: tuple[Path, ...] = ()
    convert: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def read(self, *, dtype: torch.dtype | None,
             device: str | torch.device) -> dict[str, torch.Tensor]:
        """The part's tensors (floating ones cast to `dtype`), one file read at a time."""
        if self.files:
            tensors: dict[str, torch.Tensor] = {}
            for file in self.files:
                tensors.update(load_file(file, dtype=dtype, device=device))
            return self.convert(tensors) if self.convert else tensors
        loaded = load_file(self.path, keys=[self.prefix + key for key in self.keys],
                           dtype=dtype, device=device)
        tensors = {key[len(self.prefix):]: value for key, value in loaded.items()}
        return self.convert(tensors) if self.convert else tensors


@dataclass(frozen=True)
class FlowPlan:
    """A flow model's family and the source of each part ("diffusion", "vae", encoders)."""

    path: str
    family: FlowFamily
    sources: dict[str, Source]
    modules: tuple[PartFile, ...] = ()  # separate files used, for infotext
    metadata: dict[str, object] = field(default_factory=dict)


def plan_flow_checkpoint(path: str | os.PathLike[str], *, folders: Sequence[Path] = (),
                         module_names: Sequence[str] = ()) -> FlowPlan | None:
    """The plan to load `path` as a flow model, or None when it is not one (headers only)."""
    path = os.fspath(path)
    found = _read_header(path)
    if found is None:
        return None
    header, metadata, sources = found
    layout = detect_flow(header, metadata, path=path)
    if layout is None:
        return None
    family = layout.family
    sources = sources or _layout_sources(path, header, layout)
    chosen = resolve_modules(module_names, folders) if module_names else []
    wanted = [kind for kind in (VAE, *family.needs) if kind not in sources]
    wanted += [part.kind for part in chosen if part.kind not in wanted]
    available = list_parts(folders) if set(wanted) - {p.kind for p in chosen} else []
    picked = pick_parts(family, wanted, chosen=chosen, available=available, folders=folders,
                        path=path) if wanted else {}
    for kind, part in picked.items():
        family, sources[kind] = _with_part(family, kind, part)
    family = replace(family, text_encoders=tuple(  # SD3 without T5: that encoder is left out
        spec for spec in family.text_encoders if spec.name in sources))
    check_encoder_widths(family, path=path)
    return FlowPlan(path=path, family=family, sources=sources,
                    modules=tuple(picked.values()), metadata=dict(metadata))


def _read_header(path: str):
    """(header, metadata, sources or None) of a folder, GGUF or single file; None: not flow."""
    if os.path.isdir(path):
        return _folder_header(Path(path))
    if is_gguf(path):  # a quantized diffusion model (city96's GGUF files): BFL / SAI names
        gguf = read_gguf_header(path)
        header = {name: TensorInfo(shape=shape, dtype="F16") for name, shape in gguf.shapes.items()}
        return header, dict(gguf.metadata), None
    file_header = read_file_header(path)
    diffusers = _diffusers_transformer(path, file_header.tensors)
    if diffusers is not None:
        header, sources = diffusers
        return header, file_header.metadata, sources
    return file_header.tensors, file_header.metadata, None


def _layout_sources(path: str, header: Mapping[str, TensorInfo], layout) -> dict[str, Source]:
    """Each part's keys in one file, under the prefixes `detect_flow` found."""
    sources = {DIFFUSION: _file_source(path, header, layout.diffusion_prefix)}
    if layout.vae_prefix is not None:
        sources[VAE] = _file_source(path, header, layout.vae_prefix)
    for spec in layout.family.text_encoders:
        if spec.name in layout.encoders:
            sources[spec.name] = _file_source(path, header, spec.prefix)
    return sources


def _diffusers_transformer(path: str, header: Mapping[str, TensorInfo]):
    """A diffusers-named SD3 / Flux transformer saved as one file: (our header, sources)."""
    for prefix in ("", "transformer."):
        if prefix + "transformer_blocks.0.attn.to_q.weight" not in header:
            continue
        if prefix + "x_embedder.weight" in header:
            convert = diffusers_to_bfl
        elif prefix + "pos_embed.proj.weight" in header:
            convert = diffusers_to_sai
        else:
            return None
        keys = tuple(shapes_under(header, prefix))
        source = Source(path=path, prefix=prefix, keys=keys, convert=convert)
        meta = {key: torch.empty(header[prefix + key].shape, device="meta") for key in keys}
        renamed = _renamed(meta, convert, Path(path))
        return ({FOLDER_PREFIXES["transformer"] + key: info for key, info in renamed.items()},
                {DIFFUSION: source})
    return None


def _file_source(path: str, header: Mapping[str, TensorInfo], prefix: str) -> Source:
    float8 = any(info.dtype.startswith("F8") for key, info in header.items()
                 if key.startswith(prefix))
    return Source(path=path, prefix=prefix, keys=tuple(shapes_under(header, prefix)),
                  float8=float8)


def _with_part(family: FlowFamily, kind: str, part: PartFile) -> tuple[FlowFamily, Source]:
    """The family with the config of a separate part's file, and the part's source."""
    file_header = read_file_header(part.path)
    shapes = shapes_under(file_header.tensors, "")
    source = Source(path=str(part.path), keys=tuple(shapes))
    if kind == VAE:
        return replace(family, vae=vae_config(shapes, family.vae, path=str(part.path))), source
    config = encoder_config(kind, shapes, path=str(part.path),
                            base=next(s.config for s in family.text_encoders if s.name == kind))
    config = with_declared_heads(config, file_header.metadata, None)
    specs = tuple(replace(spec, config=config) if spec.name == kind else spec
                  for spec in family.text_encoders)
    return replace(family, text_encoders=specs), source


def check_encoder_widths(family: FlowFamily, *, path: str) -> None:
    """SD3's pooled vector is CLIP-L's + CLIP-G's, Flux's CLIP-L's; T5 gives the context."""
    configs = {spec.name: spec.config for spec in family.text_encoders}
    pooled = sum(config.projection_dim or config.hidden_size
                 for name, config in configs.items() if name != "t5xxl")
    expected = (family.diffusion.adm_in_channels if family.architecture == "sd3"
                else family.diffusion.vec_in_dim)
    if pooled != expected:
        raise ModelLoadError(path, f"the CLIP text encoders give a pooled vector of {pooled}, "
                                   f"{family.label} takes {expected}: mismatched text encoders")
    width = (family.diffusion.context_in_channels if family.architecture == "sd3"
             else family.diffusion.context_in_dim)
    if "t5xxl" in configs and configs["t5xxl"].hidden_size != width:
        raise ModelLoadError(path, f"the T5 text encoder is {configs['t5xxl'].hidden_size} wide, "
                                   f"{family.label} takes {width}: mismatched text encoder")


# ---- diffusers folders ----------------------------------------------------------------


def _folder_header(folder: Path):
    """(header in our prefixed names, metadata, sources) of a flow diffusers folder."""
    index_path = folder / MODEL_INDEX
    if not index_path.is_file():
        return None
    index = read_json(index_path)
    encoders = FOLDER_ENCODERS.get(str(index.get("_class_name")))
    if encoders is None:
        return None
    header: dict[str, TensorInfo] = {}
    sources: dict[str, Source] = {}
    flux = index["_class_name"] == "FluxPipeline"
    parts = [("transformer", DIFFUSION), ("vae", VAE), *encoders.items()]
    for component, kind in parts:
        if not (folder / component).is_dir():
            continue
        files = tuple(component_weight_files(folder, component))
        convert = _converter(folder, component, flux)
        prefix = FOLDER_PREFIXES.get(component, f"text_encoders.{kind}.transformer.")
        sources[kind] = Source(path=str(folder / component), files=files, convert=convert)
        header |= {prefix + key: info
                   for key, info in _converted_header(files, convert, folder / component).items()}
    if DIFFUSION not in sources:
        raise ModelLoadError(folder, "diffusers folder has no transformer/ component")
    return header, {"diffusers.model_index": index, **_clip_heads(folder, encoders)}, sources


def _clip_heads(folder: Path, encoders: Mapping[str, str]) -> dict[str, str]:
    """The CLIP head counts the folder's `config.json` files state (not in the shapes)."""
    heads = {}
    for component, kind in encoders.items():
        config = folder / component / "config.json"
        if kind != "t5xxl" and config.is_file():
            value = read_json(config).get("num_attention_heads")
            if isinstance(value, int):
                heads[kind] = value
    return {CLIP_HEADS_KEY: json.dumps(heads)} if heads else {}


def _converter(folder: Path, component: str, flux: bool):
    if component == "transformer":
        return diffusers_to_bfl if flux else diffusers_to_sai
    if component == "vae":
        config = vae_config_from_diffusers(read_json(folder / "vae" / "config.json"))
        return lambda tensors: vae_diffusers_to_ldm(tensors, config)
    return None


def _converted_header(files: Sequence[Path], convert, where: Path) -> dict[str, TensorInfo]:
    """A component's header renamed: meta tensors carry the shapes through the converter."""
    meta: dict[str, torch.Tensor] = {}
    for file in files:
        meta |= {key: torch.empty(info.shape, dtype=info.torch_dtype, device="meta")
                 for key, info in read_file_header(file).tensors.items()}
    return _renamed(meta, convert, where)


def _renamed(meta: dict[str, torch.Tensor], convert, where: Path) -> dict[str, TensorInfo]:
    """Shapes through a key converter (diffusers -> reference names), on the meta device."""
    try:
        renamed = convert(meta) if convert else meta
    except UnmappedKeysError as error:
        raise ModelLoadError(where, str(error.args[0])) from error
    return {key: TensorInfo.of(tensor) for key, tensor in renamed.items()}
