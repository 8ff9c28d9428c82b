"""The ingress side: each generation goes to a replica and is followed there.

`ClusterDispatcher.submit` is `Runtime.remote.submit` (see `modules.pipeline.submit`): it
checks the checkpoint here (a bad one fails the request at once), registers the job on
the ingress's queue (`JobQueue.adopt`, so `/progress`, `/internal/progress`, interrupt and
skip find it by id) and follows the replica's stream in a thread. A replica that dies
mid-job (killed, out of memory) costs one retry on another replica (safe: generation is
seeded, so the pictures are the same); a second loss fails the job with `Unavailable`
(HTTP 503) naming the cause. Pictures are saved here, once (`saving.replay`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from modules.cluster.messages import Failed, Finished, RemoteJob, Started
from modules.cluster.saving import replay, with_real_paths
from modules.errors import Unavailable
from modules.jobs import Job, Progress

log = logging.getLogger("easel.cluster")

RETRIES = 1  # another replica gets a job whose replica died, once


def checkpoint_title(runtime, query: str | None) -> str:
    """The title of the checkpoint `query` names ("" for none); an unknown one is a 404
    here, before any replica works."""
    return runtime.models.find(query).title if query else ""


class ClusterDispatcher:
    """Sends jobs to the deployment behind `handle`; stop requests go to `board`."""

    def __init__(self, runtime, *, handle=None, board=None) -> None:
        self.runtime = runtime
        self.handle, self.board = handle, board
        self.connected = threading.Event()
        self.failure: str | None = None  # why the cluster could not start

    def connect(self, handle, board) -> None:
        self.handle, self.board = handle, board
        self.connected.set()

    def fail(self, reason: str) -> None:
        self.failure = reason
        self.connected.set()

    def submit(self, kind: str, params, *, job_id: str | None = None,
               owner: str | None = None) -> Job:
        version, settings = self.runtime.settings.snapshot()
        default = checkpoint_title(self.runtime, settings.sd_model_checkpoint)
        override = checkpoint_title(self.runtime,
                                    params.override_settings.get("sd_model_checkpoint"))
        job = self.runtime.jobs.adopt(job_id, owner=owner)
        remote = RemoteJob(kind=kind, params=params, job_id=job.id,
                           checkpoint=override or default, default_checkpoint=default,
                           settings=settings, settings_version=version)
        job.cancel.listen(self._forwarder(job.id))
        threading.Thread(target=self._follow, args=(job, remote), daemon=True,
                         name=f"easel-remote-{job.id[-6:]}").start()
        return job

    def _forwarder(self, job_id: str) -> Callable[[str], None]:
        def forward(command: str) -> None:
            if self.board is not None:
                self.board.request.remote(job_id, command)

        return forward

    def _follow(self, job: Job, remote: RemoteJob) -> None:
        """Run `remote` to its end on some replica; finish `job` with its outcome."""
        jobs = self.runtime.jobs
        for attempt in range(RETRIES + 1):
            try:
                result = self._stream(job, remote)
            except Exception as error:
                cause = replica_loss(error)
                if cause is None:
                    jobs.finish(job, error=error)
                    return
                if attempt < RETRIES and job.cancel.pending() is None:
                    log.warning("Replica lost during job %s (%s); retrying on another", job.id,
                                cause)
                    job.progress = None
                    continue
                jobs.finish(job, error=Unavailable(
                    f"the replica running this job stopped ({cause}); try again"))
                return
            else:
                jobs.finish(job, result=result)
                return
            finally:
                self._forget(job.id)

    def _stream(self, job: Job, remote: RemoteJob):
        """Follow one attempt; the GenerationResult, or raise the job's error."""
        if not self.connected.wait(timeout=None) or self.failure:
            raise Unavailable(f"the cluster is not running: {self.failure}")
        handle = self.handle.options(stream=True, multiplexed_model_id=remote.checkpoint)
        for event in handle.generate.remote(remote):
            if isinstance(event, Progress):
                job.progress = event
            elif isinstance(event, Started):
                job.worker = event.replica
                self.runtime.jobs.begin(job)
            elif isinstance(event, Finished):
                return with_real_paths(event.result, replay(self.runtime, event.saves))
            elif isinstance(event, Failed):
                raise event.error
        raise Unavailable("the replica's answer ended without a result")

    def _forget(self, job_id: str) -> None:
        if self.board is not None:
            self.board.forget.remote(job_id)


def replica_loss(error: BaseException) -> str | None:
    """The cause, when `error` says the replica (its actor or process) went away."""
    from ray import exceptions as rx

    lost = (rx.RayActorError, rx.ActorUnavailableError, rx.WorkerCrashedError,
            rx.NodeDiedError, rx.OutOfMemoryError)
    if isinstance(error, lost):
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return f"{type(error).__name__}: {first}"[:300]
    return None
