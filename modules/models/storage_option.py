"""The `forge_unet_storage_dtype` setting ("Diffusion in Low Bits") in the model manager.

The manager reads the setting at every load (`ModelManager.storage_source`; a job's
`override_settings` value through `ModelManager.get(storage=...)`), like
`forge_additional_modules`: SD3 / Flux transformers are filled low-bit as they are read
(`assemble_flow_model(storage_label=...)`), an SD1 / SD2 / SDXL U-Net is converted after
it is built (`apply_storage_label`; the peak is then the dense U-Net's size). The label a
model was built with is kept in its metadata, so a change of the setting reloads the
model at the next job, as a change of checkpoint does. The infotext key
`Diffusion in Low Bits: <label>` is written when the label is not "Automatic" and the
diffusion model holds low-bit layers (`low_bits_infotext`); a float8 / GGUF file loaded
under "Automatic" stays low-bit without the key, as the setting did not ask for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from modules.models.lowbit_load import apply_storage_label, low_bits_infotext

STORAGE_SETTING = "forge_unet_storage_dtype"
AUTOMATIC = "Automatic"


def requested_storage(manager) -> str:
    """The storage label asked now: the job's, else the setting's ("Automatic" without one)."""
    job = getattr(manager, "job_storage", None)
    if job:
        return job
    source = getattr(manager, "storage_source", None)
    return (source() if source is not None else None) or AUTOMATIC


@contextmanager
def job_storage(manager, label: str | None) -> Iterator[None]:
    """For one `ModelManager.get` (under its lock): the job's storage label."""
    manager.job_storage = label
    try:
        yield
    finally:
        manager.job_storage = None


def store_unet(manager, unet: nn.Module, dtype: torch.dtype) -> dict[str, str]:
    """Convert a built U-Net's layers as the setting asks; its metadata entry."""
    label = requested_storage(manager)
    apply_storage_label(unet, label, compute_dtype=dtype)
    return {STORAGE_SETTING: label}


def storage_stale(manager, loaded) -> bool:
    """A cached model built under another storage label than the setting's now."""
    return loaded.metadata.get(STORAGE_SETTING, AUTOMATIC) != requested_storage(manager)


def storage_infotext(loaded) -> dict[str, str]:
    """`Diffusion in Low Bits: <label>` for a model the setting stored low-bit."""
    label = loaded.metadata.get(STORAGE_SETTING, AUTOMATIC)
    return low_bits_infotext(label, loaded.model.unet)
