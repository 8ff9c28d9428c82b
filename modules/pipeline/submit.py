"""Queueing a generation by name, so that it can run here or on a cluster's replica.

Callers (the API, the UI) name the generation (`"txt2img"`, `"img2img"`) and hand its
validated params; without cluster mode it runs on this process's job queue, with it
(`Runtime.remote`, `modules.cluster.dispatch`) on a replica, and the returned `Job`
reports progress and the result the same way in both cases.
"""

from __future__ import annotations

from modules.jobs import Job
from modules.pipeline.img2img import img2img
from modules.pipeline.txt2img import txt2img

GENERATIONS = {"txt2img": txt2img, "img2img": img2img}


def submit_generation(runtime, kind: str, params, *, job_id: str | None = None,
                      owner: str | None = None) -> Job:
    """Queue generation `kind` of `params`; the job id is the client's (`force_task_id`,
    the UI's task id) or a new random one."""
    if runtime.remote is not None:
        return runtime.remote.submit(kind, params, job_id=job_id, owner=owner)
    process = GENERATIONS[kind]
    return runtime.jobs.submit(lambda: process(runtime, params), job_id=job_id, owner=owner)
