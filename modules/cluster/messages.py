"""What goes between the ingress and a replica: one job, and the events of its stream.

Everything here is pickled by Ray. A replica answers a `RemoteJob` with `Started`, then any
number of `modules.jobs.Progress`, then `Finished` or `Failed`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from modules.settings import Settings


@dataclass(frozen=True)
class RemoteJob:
    """One generation for a replica: what the single-process queue would have run."""

    kind: str  # a name of `modules.pipeline.submit.GENERATIONS`
    params: Any  # its validated Txt2ImgParams / Img2ImgParams
    job_id: str
    checkpoint: str  # the title of the checkpoint it runs on: the multiplexing key ("":
    # the start-up default, any replica)
    default_checkpoint: str  # the `sd_model_checkpoint` option's title, or ""
    settings: Settings  # the ingress's settings when the job was submitted ...
    settings_version: int  # ... and their version (`SettingsStore.version`)


@dataclass(frozen=True)
class Started:
    """The replica took the job (the ingress then reports it running, not queued)."""

    replica: str


@dataclass(frozen=True)
class Finished:
    result: Any  # the GenerationResult
    saves: list = field(default_factory=list)  # `saving.SaveRecord`s for the ingress to write


@dataclass(frozen=True)
class Failed:
    error: BaseException


def portable(error: BaseException) -> BaseException:
    """`error` if it survives pickling unchanged in kind, else a RuntimeError with its text
    (an exception class with required constructor arguments may not)."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
    return copy if type(copy) is type(error) else RuntimeError(str(error))
