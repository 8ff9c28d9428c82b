"""The Checkpoint Merger: combine two or three checkpoints into a new file.

A1111's merger (docs/a1111-semantics.md, "Checkpoint merger") with its field names: primary /
secondary / tertiary model (A, B, C), "No interpolation", "Weighted sum" (A*(1-M) + B*M) or
"Add difference" (A + (B-C)*M), save as float16, bake in a VAE, copy the `.yaml` config, discard
weights whose name matches a regex, a custom name, and the metadata A1111 writes
(`sd_merge_recipe`, `sd_merge_models`, the inputs' own metadata, a JSON editor).

Why it streams: the output header is planned from the input headers
(`merge_plan.py`), then each weight is read from A, B and C, combined and appended to
the file before the next one is read (`safetensors_writer.py`), so memory holds a few
tensors rather than three float32 models. Pickled inputs go through the allow-list
unpickler with memory-mapped storages; `.ckpt` output (only when asked for) has to be
built whole in memory because a pickle cannot be streamed.

The file lands in the first checkpoint folder (`--ckpt-dir`, else
`models/Stable-diffusion/`) atomically, never over an existing file, and the model list
(re-read from disk on every listing) shows it at once.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.errors import ParamsError
from modules.imaging.filenames import safe_name
from modules.models.checkpoints import CheckpointInfo, find_checkpoint
from modules.models.family_metadata import METADATA_KEY
from modules.models.loader import load_vae_state_dict
from modules.models.merge_plan import (
    ADD_DIFFERENCE,
    FIELDS,
    INPUT_CONV,
    INTERP_METHODS,
    NO_INTERPOLATION,
    VARIANT_SUFFIX,
    WEIGHTED_SUM,
    MergeInputs,
    Step,
    merged_value,
    plan_merge,
)
from modules.models.safetensors_io import TensorInfo
from modules.models.safetensors_writer import SafetensorsWriter
from modules.models.tensor_source import TensorSource
from modules.models.vae_select import list_vaes

CONFIG_SOURCES = ("A, B or C", "B", "C", "Don't")
CHECKPOINT_FORMATS = ("safetensors", "ckpt")
NO_VAE = "None"
BAD_NAME = re.compile(r"[\\/:*?\"<>|\x00-\x1f]")

Progress = Callable[[int, int], None]  # (weights done, weights in all)


@dataclass(kw_only=True)
class MergeParams:
    """The merger's inputs, under A1111's names (`modelmerger` arguments)."""

    primary_model_name: str
    secondary_model_name: str = ""
    tertiary_model_name: str = ""
    interp_method: str = WEIGHTED_SUM
    multiplier: float = 0.3
    save_as_half: bool = False
    custom_name: str = ""
    checkpoint_format: str = "safetensors"
    config_source: str = CONFIG_SOURCES[0]
    bake_in_vae: str = NO_VAE
    discard_weights: str = ""
    save_metadata: bool = True
    add_merge_recipe: bool = True
    copy_metadata_fields: bool = True
    metadata_json: str = ""

    def validate(self) -> None:
        _one_of("interp_method", self.interp_method, INTERP_METHODS)
        _one_of("checkpoint_format", self.checkpoint_format, CHECKPOINT_FORMATS)
        _one_of("config_source", self.config_source, CONFIG_SOURCES)
        if isinstance(self.multiplier, bool) or not isinstance(self.multiplier, (int, float)) \
                or not math.isfinite(self.multiplier) or not 0 <= self.multiplier <= 1:
            raise ParamsError("multiplier", f"must be a number in [0, 1], got {self.multiplier!r}")
        needed = {NO_INTERPOLATION: 1, WEIGHTED_SUM: 2, ADD_DIFFERENCE: 3}[self.interp_method]
        for field in FIELDS[:needed]:
            if not str(getattr(self, field) or "").strip():
                raise ParamsError(field, f"{self.interp_method} needs this model")
        if BAD_NAME.search(self.custom_name) or self.custom_name.strip() in (".", ".."):
            raise ParamsError("custom_name", f"{self.custom_name!r} is not a file name "
                                             f"(no folders or \\ / : * ? \" < > |)")
        self.discard_pattern()
        self.user_metadata()

    def used_fields(self) -> tuple[str, ...]:
        needed = {NO_INTERPOLATION: 1, WEIGHTED_SUM: 2, ADD_DIFFERENCE: 3}[self.interp_method]
        return FIELDS[:needed]

    def discard_pattern(self) -> re.Pattern | None:
        if not self.discard_weights:
            return None
        try:
            return re.compile(self.discard_weights)
        except re.error as error:
            raise ParamsError("discard_weights", f"not a regular expression ({error})") from None

    def user_metadata(self) -> dict[str, str]:
        if not self.metadata_json.strip():
            return {}
        try:
            value = json.loads(self.metadata_json)
        except json.JSONDecodeError as error:
            raise ParamsError("metadata_json", f"not valid JSON ({error})") from None
        if not isinstance(value, dict):
            raise ParamsError("metadata_json", "must be a JSON object")
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}


@dataclass(frozen=True)
class MergeResult:
    path: Path
    info: CheckpointInfo
    message: str


def _one_of(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ParamsError(field, f"{value!r} is not one of: {', '.join(choices)}")


def run_merge(runtime, params: MergeParams, *, progress: Progress | None = None) -> MergeResult:
    """Merge as `params` says, save the new checkpoint, return where it is."""
    params.validate()
    models = _resolve_models(runtime, params)
    vae_path = _resolve_vae(runtime, params.bake_in_vae)
    sources = [TensorSource.open(info.path) for info in models]
    vae = load_vae_state_dict(vae_path) if vae_path else None  # small: read whole
    tensors = [source.tensors for source in sources] + [None] * (3 - len(sources))
    labels = [f"{letter} ({info.name})" for letter, info in zip("ABC", models)]
    inputs = MergeInputs(a=tensors[0], b=tensors[1], c=tensors[2],
                         vae={k: TensorInfo.of(v) for k, v in vae.items()} if vae else None,
                         labels=tuple(labels + ["B", "C"][len(labels) - 1:]))
    steps = plan_merge(inputs, method=params.interp_method, save_as_half=params.save_as_half,
                       discard=params.discard_pattern())
    path = _output_path(runtime, params, models, inputs.a)
    metadata = build_metadata(runtime, params, models, sources, vae_path, path)
    produced = _produce(steps, sources, vae, params, progress)
    if params.checkpoint_format == "safetensors":
        with SafetensorsWriter(path, [(s.key, s.out) for s in steps], metadata) as writer:
            for key, tensor in produced:
                writer.write(key, tensor)
    else:
        _save_ckpt(path, dict(produced), metadata)
    _copy_config(params, models, path)
    info = _listed_info(runtime, path)
    return MergeResult(path=path, info=info, message=f"Checkpoint saved to {path}")


def _listed_info(runtime, path: Path) -> CheckpointInfo:
    """The new file as the (re-read) checkpoint list names it, hashed unless --no-hashing."""
    listed = [i for i in runtime.models.checkpoints() if os.path.samefile(i.path, path)]
    info = listed[0] if listed else runtime.models.info_for_path(path)
    return info.hashed(runtime.models.hash_cache) if runtime.models.hashing else info


def _resolve_models(runtime, params: MergeParams) -> list[CheckpointInfo]:
    listed = runtime.models.checkpoints()
    models = []
    for field in params.used_fields():
        name = str(getattr(params, field)).strip()
        info = find_checkpoint(name, listed)
        if info is None:
            raise ParamsError(field, f"no checkpoint named {name!r}")
        models.append(info)
    if params.interp_method == WEIGHTED_SUM and models[0].path == models[1].path:
        raise ParamsError("secondary_model_name", "is the primary model itself; a weighted "
                                                  "sum of a model with itself is that model")
    if params.interp_method == ADD_DIFFERENCE and models[1].path == models[2].path:
        raise ParamsError("tertiary_model_name", "is the secondary model itself; B - C "
                                                 "would be zero")
    return models


def vae_choices(runtime) -> list[str]:
    """"None" and the VAE files the merger can bake in (names relative to the VAE folder)."""
    return [NO_VAE, *(_vae_name(runtime, p) for p in _vaes(runtime))]


def _vaes(runtime) -> list[Path]:
    return list_vaes(runtime.paths.vae_dir, runtime.paths.checkpoint_dirs)


def _vae_name(runtime, path: Path) -> str:
    try:
        return path.relative_to(runtime.paths.vae_dir).as_posix()
    except ValueError:
        return path.name


def _resolve_vae(runtime, name: str) -> Path | None:
    if not name or name == NO_VAE:
        return None
    for path in _vaes(runtime):
        if name in (_vae_name(runtime, path), path.name):
            return path
    raise ParamsError("bake_in_vae", f"no VAE named {name!r}; choose one of: "
                                     f"{', '.join(vae_choices(runtime))}")


def output_stem(params: MergeParams, models: list[CheckpointInfo],
                a: dict[str, TensorInfo]) -> str:
    """A1111's file name: the custom name, or one that spells the recipe out."""
    stem = params.custom_name.strip()
    for suffix in (".safetensors", ".ckpt"):
        stem = stem.removesuffix(suffix)
    if not stem:
        names = [m.model_name for m in models]
        m = round(params.multiplier, 2)
        stem = {NO_INTERPOLATION: lambda: names[0],
                WEIGHTED_SUM: lambda: f"{round(1 - params.multiplier, 2)}({names[0]}) + "
                                      f"{m}({names[1]})",
                ADD_DIFFERENCE: lambda: f"{names[0]} + {m}({names[1]} - {names[2]})",
                }[params.interp_method]()
    if params.interp_method != NO_INTERPOLATION and INPUT_CONV in a:
        stem += VARIANT_SUFFIX.get(a[INPUT_CONV].shape[1], "")
    # Valid on Windows too: no device name (CON...), no trailing dot, a fitting length.
    return safe_name(stem, suffix=".safetensors").removesuffix(".safetensors")


def _output_path(runtime, params: MergeParams, models, a) -> Path:
    folder = Path(runtime.paths.checkpoint_dirs[0])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{output_stem(params, models, a)}.{params.checkpoint_format}"
    if path.exists():
        raise ParamsError("custom_name", f"{path} already exists; choose another name")
    return path


def build_metadata(runtime, params: MergeParams, models: list[CheckpointInfo],
                   sources: list[TensorSource], vae_path: Path | None,
                   path: Path) -> dict[str, str]:
    """A1111's merge metadata; A's architecture declaration is always kept (loading needs it)."""
    metadata: dict[str, str] = {}
    if params.save_metadata:
        metadata["format"] = "pt"
        if params.copy_metadata_fields:
            for source in reversed(sources):  # A's values win
                metadata.update({k: v if isinstance(v, str) else json.dumps(v)
                                 for k, v in source.metadata.items()})
        if params.add_merge_recipe:
            metadata.update(_recipe(runtime, params, models, sources, vae_path, path))
        metadata.update(params.user_metadata())
    if METADATA_KEY in sources[0].metadata:
        raw = sources[0].metadata[METADATA_KEY]
        metadata[METADATA_KEY] = raw if isinstance(raw, str) else json.dumps(raw)
    return metadata


def _recipe(runtime, params, models, sources, vae_path, path) -> dict[str, str]:
    hashes = [info.hashed(runtime.models.hash_cache).sha256 for info in models]
    a_in = sources[0].tensors.get(INPUT_CONV)
    recipe = {
        "type": "webui",
        "primary_model_hash": hashes[0],
        "secondary_model_hash": hashes[1] if len(hashes) > 1 else None,
        "tertiary_model_hash": hashes[2] if len(hashes) > 2 else None,
        "interp_method": params.interp_method,
        "multiplier": params.multiplier,
        "save_as_half": params.save_as_half,
        "custom_name": params.custom_name,
        "config_source": params.config_source,
        "bake_in_vae": vae_path.name if vae_path else None,
        "discard_weights": params.discard_weights,
        "is_inpainting": bool(a_in and a_in.shape[1] == 9),
        "is_instruct_pix2pix": bool(a_in and a_in.shape[1] == 8),
    }
    merged: dict[str, object] = {}
    for info, sha256, source in zip(models, hashes, sources):
        earlier = source.metadata.get("sd_merge_models")
        if isinstance(earlier, dict):
            merged.update(earlier)
        merged[sha256] = {"name": info.name, "legacy_hash": info.legacy_hash,
                          "sd_merge_recipe": source.metadata.get("sd_merge_recipe")}
    return {"sd_merge_recipe": json.dumps(recipe), "sd_merge_models": json.dumps(merged)}


def _produce(steps: list[Step], sources: list[TensorSource], vae: dict | None,
             params: MergeParams, progress: Progress | None):
    """Yield (key, tensor) for each step in order, reading each input once, in step order."""
    a_keys = [s.key for s in steps if s.op in ("copy_a", "merge")]
    b_keys = [s.key for s in steps if s.op in ("merge", "copy_b")]
    a_iter = sources[0].read(a_keys)
    b_iter = sources[1].read(b_keys) if len(sources) > 1 else iter(())
    c_iter = sources[2].read([s.key for s in steps if s.op == "merge"]) \
        if params.interp_method == ADD_DIFFERENCE else iter(())
    for done, step in enumerate(steps, 1):
        a = next(a_iter)[1] if step.op in ("copy_a", "merge") else None
        if step.op == "merge":
            c = next(c_iter)[1] if params.interp_method == ADD_DIFFERENCE else None
            tensor = merged_value(step, a, next(b_iter)[1], c, method=params.interp_method,
                                  multiplier=params.multiplier)
        elif step.op == "copy_b":
            tensor = next(b_iter)[1]
        elif step.op == "vae":
            tensor = vae[step.key.split(".", 1)[1]]
        else:
            tensor = a
        yield step.key, tensor.to(step.out.torch_dtype)
        if progress is not None:
            progress(done, len(steps))


def _save_ckpt(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A1111's `.ckpt` layout (`{"state_dict": ...}`), written beside and renamed (atomic).

    The metadata strings sit beside `state_dict`, where the loader reads a pickle's
    scalars as metadata (so a scaled-down family's declaration survives).
    """
    temp = path.with_name(f".{path.name}.partial")
    try:
        torch.save({**metadata, "state_dict": state}, temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _copy_config(params: MergeParams, models: list[CheckpointInfo], path: Path) -> None:
    """Copy `<model>.yaml` of the chosen input beside the new file (A1111's "Copy config")."""
    order = {"A, B or C": models, "B": models[1:2], "C": models[2:3], "Don't": []}
    for info in order[params.config_source]:
        config = Path(info.path).with_suffix(".yaml")
        if config.is_file():
            shutil.copyfile(config, path.with_suffix(".yaml"))
            return
