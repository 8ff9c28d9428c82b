"""Scaled-down families declared in a checkpoint's metadata.

Full-size checkpoints are recognised from their shapes alone. A model with other
numbers (the shipped demo model, models trained by Easel) states its architecture in
the safetensors `__metadata__` under `easel.family`, a JSON object of the family's
config fields; detection rebuilds the `Family` from it and still checks every shape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from modules.models.errors import ModelLoadError
from modules.models.families import Family, TextEncoderSpec
from modules.nn.configs import NoiseScheduleConfig, TextEncoderConfig, UNetConfig, VAEConfig

METADATA_KEY = "easel.family"


def family_to_metadata(family: Family) -> str:
    """The JSON text stored under `easel.family`."""
    return json.dumps(dataclasses.asdict(family), sort_keys=True)


def family_from_metadata(metadata: Mapping[str, object], *, path: str) -> Family | None:
    """The declared family, or None when the file declares none."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        data = json.loads(raw) if isinstance(raw, str) else dict(raw)  # type: ignore[arg-type]
        return _family(data)
    except (TypeError, ValueError, KeyError) as error:
        raise ModelLoadError(path, f"invalid {METADATA_KEY} metadata ({error})") from error


def _family(data: dict[str, Any]) -> Family:
    encoders = tuple(
        TextEncoderSpec(name=e["name"], prefix=e["prefix"],
                        config=_build(TextEncoderConfig, e["config"]))
        for e in data["text_encoders"]
    )
    return Family(
        name=str(data["name"]),
        label=str(data["label"]),
        unet=_build(UNetConfig, data["unet"]),
        vae=_build(VAEConfig, data["vae"]),
        text_encoders=encoders,
        prediction=data.get("prediction", "eps"),
        native_resolution=int(data.get("native_resolution", 512)),
        adm=data.get("adm", "none"),
        schedule=_build(NoiseScheduleConfig, data.get("schedule", {})),
        zero_terminal_snr=bool(data.get("zero_terminal_snr", False)),
    )


def _build(cls, values: Mapping[str, Any]):
    """A config dataclass from JSON values; lists become tuples, unknown keys are errors."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise KeyError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**converted)
