"""The job queue: one generation at a time, in submission order, with progress.

A job is a generator function (see `processing`). It yields `Progress` events and
returns its result. The worker thread drives it and answers each event with a
command, sent back into the generator: `None` to go on, `"skip"` to end the current
batch, `"interrupt"` to end the job (the generator still returns what it has).
Progress, interrupt and skip always refer to the running job.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

Command = str | None


@dataclass
class Progress:
    """One step of one job, as the UI's progress bar and `/sdapi/v1/progress` show it."""

    step: int
    total_steps: int
    job_no: int = 0
    job_count: int = 1
    preview: Any = None  # a PIL image, when a live preview was made this step
    text: str = ""


JobFunction = Callable[[], Generator[Progress, Command, Any]]
RECENT_JOBS_KEPT = 256  # finished jobs remembered for progress look-ups by id


@dataclass
class Job:
    """A queued or running generation."""

    id: str
    task: JobFunction
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: Progress | None = None
    result: Any = None
    error: BaseException | None = None
    error_text: str = ""
    _command: Command = None
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends; re-raise its error in the caller's thread."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"job {self.id} still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def fraction(self) -> float:
        p = self.progress
        if p is None or p.total_steps == 0:
            return 0.0
        per_job = 1.0 / max(p.job_count, 1)
        return min(1.0, p.job_no * per_job + per_job * p.step / p.total_steps)

    def eta_seconds(self) -> float | None:
        fraction = self.fraction()
        if self.started is None or fraction <= 0:
            return None
        elapsed = time.time() - self.started
        return elapsed / fraction - elapsed


class JobQueue:
    """A FIFO of jobs served by one worker thread (generation is not re-entrant)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._current: Job | None = None
        self._worker: threading.Thread | None = None
        self._recent: OrderedDict[str, Job] = OrderedDict()

    def start(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name="easel-jobs", daemon=True)
            self._worker.start()

    def stop(self) -> None:
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=30)
            self._worker = None

    def submit(self, task: JobFunction, job_id: str | None = None) -> Job:
        self.start()
        job = Job(id=job_id or f"job-{next(self._ids)}", task=task)
        with self._lock:
            self._recent[job.id] = job
            while len(self._recent) > RECENT_JOBS_KEPT:
                self._recent.popitem(last=False)
        self._queue.put(job)
        return job

    def find(self, job_id: str) -> Job | None:
        """A queued, running or recently finished job by id (for progress polling)."""
        with self._lock:
            return self._recent.get(job_id)

    def run(self, task: JobFunction) -> Any:
        """Submit and wait: the common path for API handlers."""
        return self.submit(task).wait()

    @property
    def current(self) -> Job | None:
        with self._lock:
            return self._current

    def pending(self) -> int:
        return self._queue.qsize()

    def interrupt(self) -> bool:
        return self._command("interrupt")

    def skip(self) -> bool:
        return self._command("skip")

    def _command(self, command: str) -> bool:
        with self._lock:
            if self._current is None:
                return False
            self._current._command = command
            return True

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                self._current = job
            try:
                job.result = drive(job)
            except BaseException as error:  # a failed job must never stop the worker
                job.error = error
                job.error_text = traceback.format_exc()
            finally:
                job.finished = time.time()
                with self._lock:
                    self._current = None
                job._done.set()


def drive(job: Job) -> Any:
    """Run a job's generator to the end, feeding back skip/interrupt commands."""
    job.started = time.time()
    generator = job.task()
    command: Command = None
    try:
        while True:
            event = generator.send(command)
            job.progress = event
            command, job._command = job._command, None
    except StopIteration as stop:
        return stop.value
