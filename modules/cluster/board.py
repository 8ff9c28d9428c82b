"""The control board: stop requests for jobs that run on replicas, by job id.

A small Ray actor owned by the ingress. The ingress posts "interrupt" / "skip" when a
client stops a job (`Cancellation.listen`); the replica running it polls while the job
runs and hands the command to the job's own `Cancellation`, so a stop acts inside the
step as on one process. Commands of jobs nobody takes are bounded and forgotten.
"""

from __future__ import annotations

from collections import OrderedDict

BOARD_NAME = "easel-control-board"
KEPT = 4096  # at most this many untaken commands (finished jobs' are forgotten)


class ControlBoard:
    """job id -> the command waiting for it; an interrupt is never downgraded to a skip."""

    def __init__(self) -> None:
        self._commands: OrderedDict[str, str] = OrderedDict()

    def request(self, job_id: str, command: str) -> None:
        if self._commands.get(job_id) != "interrupt":
            self._commands[job_id] = command
        while len(self._commands) > KEPT:
            self._commands.popitem(last=False)

    def take(self, job_id: str) -> str | None:
        return self._commands.pop(job_id, None)

    def forget(self, job_id: str) -> None:
        self._commands.pop(job_id, None)


def board_actor(namespace: str):
    """The board of this Easel cluster (created by the ingress, found by the replicas)."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=64)(ControlBoard)
    return actor.options(name=BOARD_NAME, namespace=namespace, get_if_exists=True).remote()
