"""Job and server control: progress, interrupt/skip, options, flags, checkpoints, memory.

Progress follows A1111's formula (docs/a1111-semantics.md, "Extras, PNG info and progress"): 0.01 +
job_no/job_count + (step/steps)/job_count, capped at 1, and eta = elapsed/progress - elapsed.
Changing the checkpoint, unloading and reloading go through the job queue, so they wait for
the running generation instead of pulling the model from under it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Request

from modules.api.convert import encode_data_uri, encode_png_base64
from modules.api.errors import ApiError
from modules.api.generation import check_module_names, check_vae_name, job_timestamp
from modules.api.schemas import (
    InternalProgressRequest,
    JobControlRequest,
    ProgressResponse,
    check_finite,
)
from modules.api.security import basic_user
from modules.jobs import Job
from modules.models.errors import ModelLoadError
from modules.settings import SettingsError, validate

SECRET_FLAG_WORDS = ("auth", "password", "token", "secret", "key")


def job_fraction(job: Job) -> float:
    """A1111's progress value for a job (0 until the first step)."""
    p = job.progress
    if p is None or p.job_count <= 0 or p.total_steps <= 0:
        return 0.0
    return min(1.0, 0.01 + p.job_no / p.job_count + p.step / p.total_steps / p.job_count)


def eta_seconds(job: Job, fraction: float) -> float:
    if job.started is None or fraction <= 0:
        return 0.0
    elapsed = time.time() - job.started
    return max(0.0, elapsed / fraction - elapsed)


def in_queue(function: Callable[[], Any]):
    """A job function (a generator) that runs `function` in its turn and returns its value."""
    def task():
        return function()
        yield  # unreachable: makes this a generator, the job queue's contract

    return task


class ControlRoutes:
    def __init__(self, runtime) -> None:
        self.runtime = runtime
        self.stopped: dict[str, str] = {}  # job id -> "interrupted" | "skipped"

    def register(self, router: APIRouter) -> None:
        add = router.add_api_route
        add("/sdapi/v1/progress", self.progress, methods=["GET"], response_model=ProgressResponse)
        add("/sdapi/v1/interrupt", self.interrupt, methods=["POST"])
        add("/sdapi/v1/skip", self.skip, methods=["POST"])
        add("/sdapi/v1/options", self.get_options, methods=["GET"])
        add("/sdapi/v1/options", self.set_options, methods=["POST"])
        add("/sdapi/v1/cmd-flags", self.cmd_flags, methods=["GET"])
        add("/sdapi/v1/refresh-checkpoints", self.refresh_checkpoints, methods=["POST"])
        add("/sdapi/v1/unload-checkpoint", self.unload_checkpoint, methods=["POST"])
        add("/sdapi/v1/reload-checkpoint", self.reload_checkpoint, methods=["POST"])
        add("/sdapi/v1/memory", self.memory, methods=["GET"])

    def progress(self, skip_current_image: bool = False,
                 id_task: str | None = None) -> dict[str, Any]:
        """The job `id_task` (Easel's addition, for a cluster's many jobs) or the oldest
        running one."""
        jobs = self.runtime.jobs
        job = jobs.find(id_task) if id_task else jobs.current
        if job is None or job.done:
            return {"progress": 0.0, "eta_relative": 0.0, "state": {}, "current_image": None,
                    "textinfo": None}
        p, fraction = job.progress, job_fraction(job)
        preview = p.preview if p is not None and not skip_current_image else None
        stopped = self.stopped.get(job.id)
        state = {"skipped": stopped == "skipped", "interrupted": stopped == "interrupted",
                 "job": job.id, "job_count": p.job_count if p else 1,
                 "job_timestamp": job_timestamp(job.started), "job_no": p.job_no if p else 0,
                 "sampling_step": p.step if p else 0, "sampling_steps": p.total_steps if p else 0}
        return {"progress": fraction, "eta_relative": eta_seconds(job, fraction), "state": state,
                "current_image": encode_png_base64(preview) if preview is not None else None,
                "textinfo": (p.text or None) if p else None}

    def _stop(self, command: str, body: JobControlRequest | None, http: Request) -> None:
        """Stop the job `id_task` when given, else the caller's running jobs (every running
        job without auth; with one worker, that is the running job, as A1111)."""
        owner = basic_user(http.headers.get("authorization"))
        for job in self.runtime.jobs.targets(body.id_task if body else None, owner):
            job.cancel.request(command)
            self.stopped[job.id] = "interrupted" if command == "interrupt" else "skipped"
            while len(self.stopped) > 256:
                self.stopped.pop(next(iter(self.stopped)))

    def interrupt(self, http: Request, body: JobControlRequest | None = Body(None)) -> dict:
        self._stop("interrupt", body, http)
        return {}

    def skip(self, http: Request, body: JobControlRequest | None = Body(None)) -> None:
        self._stop("skip", body, http)

    def internal_progress(self, request: InternalProgressRequest) -> dict[str, Any]:
        """The UI's progress poll for one task id (A1111's `/internal/progress`)."""
        job = self.runtime.jobs.find(request.id_task) if request.id_task else None
        active = job is not None and job.started is not None and not job.done
        queued = job is not None and job.started is None and not job.done
        completed = job is not None and job.done
        if not active:
            return {"active": False, "queued": queued, "completed": completed,
                    "id_live_preview": -1, "textinfo": "In queue..." if queued else "Waiting..."}
        fraction = job_fraction(job)
        p = job.progress
        preview = p.preview if p is not None and request.live_preview else None
        return {"active": True, "queued": False, "completed": False, "progress": fraction,
                "eta": eta_seconds(job, fraction) if fraction > 0 else None,
                "live_preview": encode_data_uri(preview) if preview is not None else None,
                "id_live_preview": (p.step if preview is not None else request.id_live_preview),
                "textinfo": (p.text or None) if p else None}

    def get_options(self) -> dict[str, Any]:
        options = self.runtime.settings.current.to_dict()
        current = self.runtime.models.current
        if not options.get("sd_model_checkpoint") and current is not None:
            options["sd_model_checkpoint"] = current.title
        return options

    def set_options(self, changes: dict[str, Any] = Body(...)) -> None:
        try:
            check_finite(changes, "options")
        except ValueError as error:
            raise SettingsError(str(error)) from error
        problems = []
        for name, value in changes.items():
            try:
                validate(name, value)
            except SettingsError as error:
                problems.append(str(error))
        if problems:
            raise SettingsError("; ".join(problems))
        self.runtime.settings.for_request(changes)  # guarded settings: 403 (422) before saving
        check_vae_name(self.runtime, changes.get("sd_vae"))
        check_module_names(self.runtime, changes.get("forge_additional_modules"))
        checkpoint = changes.get("sd_model_checkpoint")
        if checkpoint:
            info = self._find_checkpoint(checkpoint)
            changes = {**changes, "sd_model_checkpoint": info.title}
        if checkpoint and self.runtime.remote is None:
            # Loaded first: a checkpoint that cannot be loaded is never saved. A cluster's
            # replicas load it on their next job for it (Serve's model multiplexing).
            self.runtime.jobs.submit(in_queue(lambda: self.runtime.models.select(info))).wait()
        self.runtime.settings.update(changes)

    def _find_checkpoint(self, query: str):
        try:
            return self.runtime.models.find(query)
        except ModelLoadError as error:
            raise ApiError(404, f"model {query!r} not found ({error.reason})") from error

    def cmd_flags(self) -> dict[str, Any]:
        """Every flag; anything that can hold a credential is blanked."""
        flags = dict(vars(self.runtime.args))
        for name, value in flags.items():
            if any(word in name.lower() for word in SECRET_FLAG_WORDS) and value:
                flags[name] = None
        return check_jsonable(flags)

    def refresh_checkpoints(self) -> None:
        self.runtime.models.checkpoints()

    def unload_checkpoint(self) -> dict:
        self._refuse_in_cluster("Unloading the checkpoint")
        self.runtime.jobs.submit(in_queue(self.runtime.models.unload)).wait()
        return {}

    def reload_checkpoint(self) -> dict:
        self._refuse_in_cluster("Reloading the checkpoint")
        models, settings = self.runtime.models, self.runtime.settings.current

        def reload() -> None:
            current = models.current
            if current is not None:
                models.unload()
                models.select(current.info)
            else:
                models.load_initial(settings.sd_model_checkpoint,
                                    getattr(self.runtime.args, "ckpt", None))

        self.runtime.jobs.submit(in_queue(reload)).wait()
        return {}

    def _refuse_in_cluster(self, what: str) -> None:
        if self.runtime.remote is not None:
            raise ApiError(501, f"{what} is not available in cluster mode: each replica keeps "
                                "its own --replica-models most recent checkpoints",
                           error="NotImplementedError")

    def memory(self) -> dict[str, Any]:
        return {"ram": ram_stats(), "cuda": cuda_stats()}


def check_jsonable(flags: dict[str, Any]) -> dict[str, Any]:
    return {name: value if isinstance(value, (str, int, float, bool, list, type(None)))
            else str(value) for name, value in flags.items()}


def ram_stats() -> dict[str, int]:
    import psutil

    memory = psutil.virtual_memory()
    return {"free": memory.available, "used": memory.total - memory.available,
            "total": memory.total}


def cuda_stats() -> dict[str, Any]:
    import torch

    if not torch.cuda.is_available():
        return {"error": "CUDA is not available"}
    free, total = torch.cuda.mem_get_info()
    stats = torch.cuda.memory_stats()
    pair = lambda key: {"current": stats.get(f"{key}.all.current", 0),  # noqa: E731
                        "peak": stats.get(f"{key}.all.peak", 0)}
    return {"system": {"free": free, "used": total - free, "total": total},
            "active": pair("active_bytes"), "allocated": pair("allocated_bytes"),
            "reserved": pair("reserved_bytes"), "inactive": pair("inactive_split_bytes"),
            "events": {"retries": stats.get("num_alloc_retries", 0),
                       "oom": stats.get("num_ooms", 0)}}
