"""A replica: one Easel Runtime on one device, running the jobs its ingress sends.

Ray Serve makes one instance per replica (`start.deploy`). Its jobs run one at a time on
the replica's own job queue; Serve may hand it the next one meanwhile
(`start.REPLICA_QUEUE`), so no time is lost between jobs. `generate` answers a `RemoteJob`
with a stream: `Started` when the job starts, its `Progress` events (live previews
included), then `Finished` (the result and the pictures to save) or `Failed`. Serve's
model multiplexing (`get_model`, made by `replica_class` with the LRU size) records which
checkpoints the replica serves, so the router sends a job where its model is loaded; the
loading itself happens on the job thread. While a job runs the replica polls the control
board for stop requests. A job that fails (a model that cannot be loaded, a bad request)
is answered with `Failed`; the replica stays in service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from modules.cluster.board import BOARD_NAME
from modules.cluster.messages import Failed, Finished, RemoteJob, Started, portable
from modules.cluster.saving import RecordingSaver
from modules.jobs import Job
from modules.pipeline.submit import GENERATIONS
from modules.runtime import Runtime, SettingsStore
from modules.settings import ClientAccess

POLL_S = 0.2  # a running job looks for stop requests and sends progress 5 times a second


class ReplicaCore:
    """The replica's state and work; `replica_class` adds the multiplexed loader."""

    def __init__(self, args: argparse.Namespace, *, namespace: str, threads: int | None,
                 models_kept: int) -> None:
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.namespace = namespace
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.runtime = replica_runtime(args, models_kept=models_kept)
        self._board = None
        self._startup = None  # the start-up default checkpoint, once loaded

    def board(self):
        if self._board is None:
            import ray

            self._board = ray.get_actor(BOARD_NAME, namespace=self.namespace)
        return self._board

    def use_default(self, title: str) -> None:
        """Make `title` the model of jobs that name none, as `/options` does on one process;
        "" is the start-up default (`--ckpt`, else the first listed that loads)."""
        models = self.runtime.models
        if title:
            models.select(models.find(title))
        elif self._startup is None:
            self._startup = models.load_initial("", getattr(self.runtime.args, "ckpt", None)).info
        else:
            models.select(self._startup)

    async def generate(self, job: RemoteJob):
        """The stream answering one job (see the module docstring)."""
        if job.checkpoint:  # tells Serve's router which checkpoints this replica serves
            await self.get_model(job.checkpoint)
        local = self.runtime.jobs.submit(lambda: self._run(job), job_id=job.job_id)
        try:
            async for event in self._follow(local):
                yield event
        finally:  # the ingress went away (shutdown, cancelled stream): stop the work
            if not local.done:
                local.cancel.stop()
        if local.error is not None:  # the usual clear error; the replica keeps serving
            yield Failed(portable(local.error))
        else:
            result, saves = local.result
            yield Finished(result=result, saves=saves)

    def _run(self, job: RemoteJob):
        """The job function, on the replica's job thread (so one job's settings, model and
        saves never mix with the next's, which may already wait here): the ingress's
        settings, the default checkpoint when the job runs on it (a job naming another gets
        that one from the pipeline, leaving the default alone), the generation; returns
        (result, the pictures to save)."""
        runtime = self.runtime
        runtime.settings.adopt(job.settings_version, job.settings)
        runtime.saver.take()  # what a failed job before this one left
        if job.checkpoint == job.default_checkpoint:
            self.use_default(job.default_checkpoint)
        result = yield from GENERATIONS[job.kind](runtime, job.params)
        return result, runtime.saver.take()

    async def _follow(self, local: Job):
        """`Started` once the local job starts, its progress events while it runs; stop
        requests handed to it."""
        sent = None
        started = False
        while True:
            finished = await asyncio.to_thread(local.finished_within, POLL_S)
            if not started and local.started is not None:
                started = True
                yield Started(replica=self.name)
            if finished:
                break
            command = await self.board().take.remote(local.id)
            if command is not None:
                local.cancel.request(command)
            if local.progress is not None and local.progress is not sent:
                sent = local.progress
                yield sent
        if local.progress is not None and local.progress is not sent:
            yield local.progress  # the last step, so the ingress's record is exact


def replica_runtime(args: argparse.Namespace, *, models_kept: int) -> Runtime:
    """A Runtime that adopts its ingress's settings per job, records its saves, keeps
    `models_kept` checkpoints and loads none before its first job."""
    from modules.paths import Paths

    paths = Paths.from_args(args)
    store = SettingsStore(paths.config_file, frozen=True,
                          access=ClientAccess.from_args(args, paths.data_dir))
    runtime = Runtime.create(args, settings=store)
    runtime.models.cache_limit_source = lambda: models_kept
    runtime.saver = RecordingSaver(paths.data_dir)
    runtime.ready.set()
    return runtime


def replica_class(models_kept: int) -> type:
    """The deployment class, with Serve's per-replica model LRU of `models_kept` entries."""
    from ray import serve

    class EaselReplica(ReplicaCore):
        @serve.multiplexed(max_num_models_per_replica=models_kept)
        async def get_model(self, title: str) -> Any:
            # Only the routing record: loading happens on the job thread, never beside a
            # running job (a replica holds a running job and the next one).
            return title

    return EaselReplica
