"""The job queue: one generation at a time, in submission order, with progress.

A job is a generator function (see `processing`). It yields `Progress` events and
returns its result. The worker thread drives it and answers each event with a
command, sent back into the generator: `None` to go on, `"skip"` to end the current
batch, `"interrupt"` to end the job (the generator still returns what it has).
Progress, interrupt and skip refer to a job by id, or to the running job(s).

Jobs can also run elsewhere (cluster mode, `modules.cluster`): `adopt` registers a job
whose work a remote worker does; its dispatcher calls `begin`, sets `progress` and calls
`finish`, and forwards the job's stop requests (`Cancellation.listen`). Then several jobs
run at once, and `current` is the oldest running one.

A step can be long (a huge image's attention, a VAE decode): each job owns a
`Cancellation` that code inside the step checks (U-Net blocks, attention chunks, VAE
tiles), raising `JobInterrupted`, which the sampling loop turns into the skipped /
interrupted result. `stop` / `cancel_all` (server shutdown) fail the queued jobs and stop
the running one. `side_work` bounds the picture routes that run beside the queue.
"""

from __future__ import annotations

import queue
import secrets
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


class JobInterrupted(Exception):
    """Raised from inside a long step (attention chunk, U-Net block, VAE tile) when the
    running job was asked to skip or stop; the sampling loop turns it into the
    skipped / interrupted result (`modules.pipeline.sample.drive_sampler`)."""

    def __init__(self, command: str):
        super().__init__(f"job {command}")
        self.command = command


class Cancellation:
    """The stop requests of one job, readable from inside a long computation.

    `request("skip" | "interrupt")` records a command; the driver takes it between steps
    (`take`), and code inside a step calls `check()`, which raises `JobInterrupted` while
    a command waits. `stop()` (server shutdown) makes every later check and take answer
    "interrupt", taken or not. Thread-safe; owned by one `Job`, no global state.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Command = None
        self._stopped = False
        self._listeners: list[Callable[[str], None]] = []

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(command)` on every later request (a remote job forwards them)."""
        with self._lock:
            self._listeners.append(callback)

    def request(self, command: str) -> None:
        with self._lock:
            if self._pending != "interrupt":  # an interrupt is never downgraded to a skip
                self._pending = command
            listeners = list(self._listeners)
        for callback in listeners:
            callback(command)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            listeners = list(self._listeners)
        for callback in listeners:
            callback("interrupt")

    @property
    def stopped(self) -> bool:
        return self._stopped

    def pending(self) -> Command:
        with self._lock:
            return "interrupt" if self._stopped else self._pending

    def take(self) -> Command:
        """The waiting command (then cleared), or None."""
        with self._lock:
            command, self._pending = self._pending, None
            return "interrupt" if self._stopped else command

    def check(self) -> None:
        """Raise `JobInterrupted` when a command waits (called between chunks of work)."""
        command = self.pending()
        if command is not None:
            raise JobInterrupted(command)


JobFunction = Callable[[], Generator[Progress, Command, Any]]
RECENT_JOBS_KEPT = 256  # finished jobs remembered for progress look-ups by id
SIDE_WORK_SLOTS = 2  # picture-decoding requests served at once outside the queue


@dataclass
class Job:
    """A queued or running generation."""

    id: str
    task: JobFunction | None  # None: the work runs elsewhere (`JobQueue.adopt`)
    owner: str | None = None  # the client that asked (its login), for "stop my jobs"
    worker: str | None = None  # where it runs when not here (a cluster replica's name)
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    progress: Progress | None = None
    result: Any = None
    error: BaseException | None = None
    error_text: str = ""
    cancel: Cancellation = field(default_factory=Cancellation)
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finished_within(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the job to end; whether it has."""
        return self._done.wait(timeout)

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


def new_job_id() -> str:
    """An unguessable id (128 random bits): knowing one job's id tells nothing of another's."""
    return f"job-{secrets.token_urlsafe(16)}"


class JobWorker(threading.Thread):
    """A queue's worker thread; `cancel` is the running job's stop requests."""

    cancel: Cancellation | None = None


def current_cancellation() -> Cancellation:
    """The stop requests of the job running on this thread (its code asks when it starts,
    `modules.pipeline.plan`); outside a queue's worker, a fresh one that is never set."""
    worker = threading.current_thread()
    cancel = worker.cancel if isinstance(worker, JobWorker) else None
    return cancel if cancel is not None else Cancellation()


class JobQueue:
    """A FIFO of jobs served by one worker thread (generation is not re-entrant)."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._running: list[Job] = []  # in start order; more than one only in cluster mode
        self._worker: threading.Thread | None = None
        self._recent: OrderedDict[str, Job] = OrderedDict()
        # Requests that decode or upscale pictures outside the queue (extras, PNG info,
        # ControlNet detect, img2img inputs) take a slot: N clients cannot multiply memory.
        self.side_work = threading.BoundedSemaphore(SIDE_WORK_SLOTS)

    def start(self) -> None:
        if self._worker is None:
            self._worker = JobWorker(target=self._run, name="easel-jobs", daemon=True)
            self._worker.start()

    def stop(self, timeout: float = 30) -> None:
        """`cancel_all`, then end the worker (a later `submit` starts a new one)."""
        self.cancel_all()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=timeout)
            self._worker = None

    def cancel_all(self) -> None:
        """Fail the queued jobs and stop the running one inside its step; returns at once
        (the server calls it on SIGTERM / Ctrl+C, from the event loop)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.error = JobInterrupted("cancelled: the server is stopping")
                job._done.set()
        for job in self.running():
            job.cancel.stop()

    def submit(self, task: JobFunction, job_id: str | None = None, *,
               owner: str | None = None) -> Job:
        self.start()
        job = self._remember(Job(id=job_id or new_job_id(), task=task, owner=owner))
        self._queue.put(job)
        return job

    def adopt(self, job_id: str | None = None, *, owner: str | None = None) -> Job:
        """A job that runs elsewhere, known here for progress, stop requests and waiting;
        its dispatcher calls `begin` and `finish`."""
        return self._remember(Job(id=job_id or new_job_id(), task=None, owner=owner))

    def begin(self, job: Job) -> None:
        job.started = job.started or time.time()
        with self._lock:
            if job not in self._running:
                self._running.append(job)

    def finish(self, job: Job, *, result: Any = None, error: BaseException | None = None) -> None:
        job.result, job.error, job.finished = result, error, time.time()
        with self._lock:
            if job in self._running:
                self._running.remove(job)
        job._done.set()

    def _remember(self, job: Job) -> Job:
        with self._lock:
            self._recent[job.id] = job
            while len(self._recent) > RECENT_JOBS_KEPT:
                self._recent.popitem(last=False)
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
        """The oldest running job."""
        with self._lock:
            return self._running[0] if self._running else None

    def running(self) -> list[Job]:
        with self._lock:
            return list(self._running)

    def pending(self) -> int:
        with self._lock:
            adopted = sum(1 for job in self._recent.values()
                          if job.task is None and job.started is None and not job.done)
        return self._queue.qsize() + adopted

    def interrupt(self, job_id: str | None = None, *, owner: str | None = None) -> bool:
        return self._command("interrupt", job_id, owner)

    def skip(self, job_id: str | None = None, *, owner: str | None = None) -> bool:
        return self._command("skip", job_id, owner)

    def targets(self, job_id: str | None = None, owner: str | None = None) -> list[Job]:
        """The job `job_id` (queued or running), else the running jobs of `owner` (every
        running job when `owner` is None)."""
        if job_id is not None:
            job = self.find(job_id)
            return [job] if job is not None and not job.done else []
        return [job for job in self.running() if owner is None or job.owner == owner]

    def _command(self, command: str, job_id: str | None, owner: str | None) -> bool:
        jobs = self.targets(job_id, owner)
        for job in jobs:
            job.cancel.request(command)
        return bool(jobs)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.begin(job)
            worker = threading.current_thread()
            if isinstance(worker, JobWorker):
                worker.cancel = job.cancel
            result, error = None, None
            try:
                result = drive(job)
            except BaseException as failure:  # a failed job must never stop the worker
                error = failure
                job.error_text = traceback.format_exc()
            finally:
                self.finish(job, result=result, error=error)


def drive(job: Job) -> Any:
    """Run a job's generator to the end, feeding back skip/interrupt commands."""
    job.started = time.time()
    generator = job.task()
    command: Command = None
    try:
        while True:
            event = generator.send(command)
            job.progress = event
            command = job.cancel.take()
    except StopIteration as stop:
        return stop.value
