"""The model manager's path for SD3 / SD3.5 / Flux.1 checkpoints.

`ModelManager._load` asks `plan_for` first: a file or folder that is a flow model gets a
`FlowPlan` (headers only, separate parts chosen from the folders and the
`forge_additional_modules` setting), and `load_flow` assembles it (diffusion weights stored
as `forge_unet_storage_dtype` says, `storage_option.py`) into a `LoadedModel`
whose `family` is a `FlowFamily` (prediction "flow", shift in `family.flow`, generation
defaults in `family.defaults`) and whose `model` is a `FlowModel` (transformer, VAE with
its latent scale/shift in `family.vae`, text encoders by name). Its `conditioner` is a
`FlowConditioner` over the model's encoders and `sigmas` the model's shifted flow table
at 1024²; driving the sampler is the pipeline's business. Its `placer` places the
parts as `--medvram` / `--lowvram` ask, T5 on the CPU when VRAM is short (offload.py).
Every failure is a `ModelLoadError` raised before anything is cached, so the model that
was serving keeps serving.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

from modules.conditioning.flow_conditioner import T5_NAME, FlowConditioner
from modules.models.checkpoints import CheckpointInfo
from modules.models.flow_loader import FlowPlan, plan_flow_checkpoint
from modules.models.flow_model import FlowModel, assemble_flow_model
from modules.models.flow_parts import MODULES_SETTING, module_folders
from modules.models.offload import ComponentPlacer, MemoryMode
from modules.models.patcher import ModelPatcher
from modules.models.storage_option import STORAGE_SETTING, requested_storage, storage_stale
from modules.nn.attention import set_attention_backend, set_attention_upcast
from modules.sampling.flow import flow_schedule


def requested_modules(manager) -> tuple[str, ...]:
    """The `forge_additional_modules` names asked now: the job's, else the setting's."""
    if getattr(manager, "job_modules", None) is not None:
        return manager.job_modules
    return tuple(manager.modules_source() or ())


@contextmanager
def job_modules(manager, names: Sequence[str] | None) -> Iterator[None]:
    """For one `ModelManager.get` (under its lock): the job's module names."""
    manager.job_modules = None if names is None else tuple(names)
    try:
        yield
    finally:
        manager.job_modules = None


def plan_for(manager, info: CheckpointInfo) -> FlowPlan | None:
    """The flow plan of a checkpoint, or None when it is an SD1/SD2/SDXL checkpoint."""
    return plan_flow_checkpoint(info.path, folders=module_folders(manager.paths),
                                module_names=requested_modules(manager))


def stale(manager, loaded) -> bool:
    """A cached model built with other `forge_additional_modules` (flow models) or another
    `forge_unet_storage_dtype` (every model) than asked now."""
    built = loaded.metadata.get(MODULES_SETTING)
    changed = built is not None and tuple(built) != requested_modules(manager)
    return changed or storage_stale(manager, loaded)


def load_flow(manager, info: CheckpointInfo, plan: FlowPlan):
    """A `LoadedModel` of the flow model `plan` describes, placed as the manager places."""
    from modules.models.manager import LoadedModel  # the manager imports this module

    family = plan.family
    mode = manager.memory_policy(family)
    device = manager.device if mode is MemoryMode.NORMAL else torch.device("cpu")
    dtype, vae_dtype = manager.precision(family)
    storage = requested_storage(manager)
    model = assemble_flow_model(plan, dtype=dtype, vae_dtype=vae_dtype, device=device,
                                storage_label=storage)
    _configure(manager, model)
    placer = ComponentPlacer(components={"text_encoders": model.text_encoders,
                                         "unet": model.unet, "vae": model.vae},
                             device=manager.device, mode=mode, cpu_capable=(T5_NAME,))
    sha256 = manager.hash_cache.sha256(info.hash_target) if manager.hashing else None
    if sha256:
        info = CheckpointInfo(path=info.path, name=info.name, legacy_hash=info.legacy_hash,
                              sha256=sha256)
    # The conditioner calls the encoders through the patcher: it holds the model's lock.
    patcher = ModelPatcher(model=model)
    conditioner = FlowConditioner(
        encoders=[patcher.text_encoder(spec.name) for spec in family.text_encoders],
        tokenizer=manager.tokenizer(), family=family)
    return LoadedModel(info=info, family=family, model=model, conditioner=conditioner,
                       sigmas=flow_schedule(family.flow).table(), sha256=sha256,
                       metadata={**plan.metadata, MODULES_SETTING: requested_modules(manager),
                                 STORAGE_SETTING: storage},
                       placer=placer, patcher=patcher)


def _configure(manager, model: FlowModel) -> None:
    """Attention kernel, upcast and memory layout as the manager's options say."""
    set_attention_backend(model.diffusion_model, manager.attention)
    model.vae.set_attention_backend(manager.attention)
    model.vae.set_channels_last(manager.channels_last)
    set_attention_upcast(model, manager.upcast_attention)
