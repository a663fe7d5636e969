"""Background jobs: every training the UI starts (image/text fine-tuning, RL) runs through one JobRunner.

Why a runner of our own: a training run takes minutes, must outlive the browser tab that started it, and
must be cancellable without losing the best model so far. So a job lives here, not in a web request:

- submit() puts a job in a FIFO queue; at most `max_concurrent` jobs run at once (one heavy job per device
  by default). When one ends, the next queued job starts. Each running job has a supervising daemon thread here.
- Where the training itself runs is a backend: "thread" (that supervising thread: what unit tests use),
  "process" (a spawned worker process, engine.workers: the app's default, so a job never holds the web
  server's interpreter lock and a crash or an out-of-memory kill takes one job, not the server), or "ray"
  (an actor on a Ray cluster, engine.ray_jobs). Process and Ray jobs need a picklable function: a module-level
  function, or a functools.partial of one.
- The training function gets a JobContext: report() progress, check should_stop() every step (it blocks
  while the job is paused, and turns True on cancel or when the time limit passes), save_best() the best
  model so far, and write files to its private temporary workdir.
- Every job belongs to the session that submitted it; to any other session it does not exist.
- One Condition guards all state. Threads sleep on it instead of polling; readers get JobStatus snapshots.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import shutil
import tempfile
import threading
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.device import DEFAULT_THREADS, set_threads
from engine.errors import UserError

QUEUED, RUNNING, PAUSED = "queued", "running", "paused"
SUCCEEDED, CANCELLED, TIMED_OUT, FAILED = "succeeded", "cancelled", "timed_out", "failed"
FINAL_STATES = (SUCCEEDED, CANCELLED, TIMED_OUT, FAILED)
MAX_EVENTS = 10_000  # progress events kept per job; older ones are dropped so a long run cannot eat memory


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job, copied under the runner's lock, so any thread can read it at leisure."""

    id: str
    name: str
    state: str  # queued | running | paused | succeeded | cancelled | timed_out | failed
    queue_position: int  # 1-based while queued, else 0
    progress: dict  # the latest reported event
    events: list[dict]
    elapsed: float  # seconds spent running, pauses excluded
    error: str | None  # one-line reason when failed
    result: Any
    created: float  # time.time() stamps
    started: float | None
    finished: float | None
    config: dict
    backend: str = "thread"  # where it runs: thread | process | ray
    node: str | None = None  # which worker or machine runs it ("worker pid 1234", a Ray node's address)
    reason: str | None = None  # one line on how it ended when that was not the usual way (failed, stopped by force)

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(eq=False)
class _Job:
    """The runner's private record of one job. Only read or written while holding the runner's lock."""

    id: str
    session: str
    name: str
    fn: Callable[[JobContext], object]
    config: dict
    time_limit_s: float | None
    inputs: list[str] = field(default_factory=list)
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    progress: dict = field(default_factory=dict)
    best: Any = None
    result: Any = None
    error: str | None = None
    workdir: Path | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    discarded: bool = False
    active_s: float = 0.0  # running time banked so far (pauses excluded)
    active_since: float | None = None  # time.monotonic() when the current running stretch began
    thread: threading.Thread | None = None
    node: str | None = None
    reason: str | None = None
    begun: bool = False  # the training function has started (a worker may still be starting before that)

    def elapsed(self) -> float:
        if self.active_since is None:
            return self.active_s
        return self.active_s + time.monotonic() - self.active_since


@dataclass
class JobContext:
    """What a training function sees of its job. Call should_stop() once per step and return when it is True.

    The same object works wherever the job runs: the three callables talk to the runner directly (thread backend)
    or through the worker's pipe (engine.workers) or a Ray actor (engine.ray_jobs)."""

    job_id: str
    workdir: Path  # everything the job writes goes here; kept after success/cancel, removed on failure/discard
    config: dict
    _report: Callable[[dict], None] = field(repr=False)
    _should_stop: Callable[[], bool] = field(repr=False)
    _save_best: Callable[[Any], None] = field(repr=False)
    inputs: dict[str, str] = field(default_factory=dict)  # a submitted input file -> its copy where the job runs

    def input_path(self, path: str | Path) -> Path:
        """Where to read an input file the job was submitted with: the same path on the submitting machine, or
        the copy a Ray node received (engine.ray_jobs ships the files named in submit's `inputs`)."""
        return Path(self.inputs.get(str(path), path))

    def report(self, **event: Any) -> None:
        """Record a progress event (step, steps, epoch, metrics, elapsed, eta, ...); the latest is `progress`."""
        self._report(dict(event))

    def should_stop(self) -> bool:
        """True once cancel was asked for or the time limit passed. Blocks while the job is paused."""
        return self._should_stop()

    def save_best(self, obj: Any) -> None:
        """Remember the best model so far, so a cancelled or timed-out job still hands something back."""
        self._save_best(obj)


class JobFailed(Exception):
    """A job ended without a result; its message is the one-line reason a user reads."""


class JobStopped(Exception):
    """A job asked to stop (cancel, time limit) did not, and was stopped by force; the message says how."""


@dataclass
class JobControl:
    """What a backend needs of a running job beyond its context: the wish of the moment, and where to say it runs."""

    fn: Callable[[JobContext], object]
    context: JobContext
    threads: int  # PyTorch threads the job may use
    nice: int  # its scheduling priority (0-19)
    wanted: Callable[[], str]  # "run" | "pause" | "stop", without blocking (the time limit is checked here)
    placed: Callable[[str], None]  # tell the runner which worker or node took the job
    started: Callable[[], None]  # the training function starts now: the job's clock (re)starts here, so the
    # time limit does not count a worker's start-up
    inputs: list[str] = field(default_factory=list)  # files the job reads from the submitting machine


class ThreadBackend:
    """Run the job in the runner's own thread: no start-up cost, everything shared. Unit tests use it. A crash in
    native code takes the process with it, which is why the app does not."""

    name = "thread"

    def run(self, control: JobControl) -> object:
        # Always set: a new thread starts with the count another thread set last (a web request's 1, say).
        set_threads(control.threads)
        lower_thread_priority(control.nice)
        control.placed("this process")
        control.started()
        try:
            return control.fn(control.context)
        finally:
            return_free_memory()

    def describe(self) -> dict:
        return {"backend": self.name, "workers": []}

    def close(self) -> None:
        pass


def make_backend(name: str):
    """thread | process | ray (the Ray address comes from MINILAB_RAY_ADDRESS)."""
    if name == "thread":
        return ThreadBackend()
    if name == "process":
        from engine.workers import ProcessBackend

        return ProcessBackend()
    if name == "ray":
        from engine.ray_jobs import RayBackend

        return RayBackend(os.environ.get("MINILAB_RAY_ADDRESS", "").strip() or "local")
    raise UserError(f"Unknown job backend {name!r}: choose thread, process or ray.")


class JobRunner:
    """Runs training functions in background threads: a FIFO queue, a concurrency cap, cancel/pause/resume."""

    def __init__(self, max_concurrent: int = 1, time_limit_s: float | None = None, max_queued: int = 32,
                 threads: int | None = None, keep_finished: int = 5, nice: int = 0, backend="thread"):
        if max_concurrent < 1:
            raise UserError(f"max_concurrent must be at least 1, got {max_concurrent}.")
        if max_queued < 0:
            raise UserError(f"max_queued cannot be negative, got {max_queued}.")
        if time_limit_s is not None and time_limit_s <= 0:
            raise UserError(f"The job time limit must be positive, got {time_limit_s}.")
        self.max_concurrent = max_concurrent
        self.time_limit_s = time_limit_s
        self.max_queued = max_queued
        self.threads = threads  # CPU threads each job's PyTorch may use (None: the cores shared among the jobs that
        # run at once; two jobs on two OpenMP teams of every core would wait on each other's threads)
        self.keep_finished = keep_finished  # finished jobs kept per session; older ones (and their files) go
        self.nice = nice  # scheduling priority of job threads (Linux nice, 0-19): training gets the CPU inference leaves
        self.backend = make_backend(backend) if isinstance(backend, str) else backend  # where jobs run (see above)
        self._cond = threading.Condition()  # guards everything below; notified on every state change
        self._jobs: dict[str, _Job] = {}  # every job not yet discarded, in submission order
        self._queue: list[_Job] = []  # waiting jobs, FIFO
        self._active: set[_Job] = set()  # jobs whose thread is running (discarded ones included)
        self._closed = False

    # ---- what the UI and CLI call -------------------------------------------------------------------

    def submit(self, session: str, fn: Callable[[JobContext], object], name: str = "job",
               config: dict | None = None, time_limit_s: float | None = None, inputs: list | None = None) -> str:
        """Queue fn to run as soon as a slot is free; returns the job id. time_limit_s overrides the default;
        `inputs` names the files fn reads (uploads), which a Ray backend copies to the node that runs it."""
        if not session:
            raise UserError("A job must belong to a session.")
        if time_limit_s is not None and time_limit_s <= 0:
            raise UserError(f"The job time limit must be positive, got {time_limit_s}.")
        if self.backend.name != "thread":
            try:  # a programming mistake, caught here rather than in a worker nobody watches
                pickle.dumps(fn)
            except Exception as error:  # noqa: BLE001 - pickle raises several types
                raise TypeError(f"A {self.backend.name} job needs a picklable function (a module-level function or a "
                                f"functools.partial of one): {error}") from error
        job = _Job(id=uuid.uuid4().hex, session=session, name=name, fn=fn, config=dict(config or {}),
                   time_limit_s=self.time_limit_s if time_limit_s is None else time_limit_s,
                   inputs=[str(path) for path in inputs or []])
        with self._cond:
            if self._closed:
                raise RuntimeError("This JobRunner has been shut down.")
            if len(self._active) >= self.max_concurrent and len(self._queue) >= self.max_queued:
                raise UserError(f"The job queue is full ({len(self._queue)} jobs waiting). "
                                "Please try again when a job has finished.")
            self._jobs[job.id] = job
            self._queue.append(job)
            self._start_queued()
            old = self._prune(session)
        for workdir in old:
            shutil.rmtree(workdir, ignore_errors=True)
        return job.id

    def status(self, job_id: str, session: str) -> JobStatus:
        with self._cond:
            return self._snapshot(self._get(job_id, session))

    def jobs(self, session: str) -> list[JobStatus]:
        """This session's jobs, oldest first: how a reloaded page finds the jobs it started."""
        with self._cond:
            return [self._snapshot(job) for job in self._jobs.values() if job.session == session]

    def training(self) -> bool:
        """Whether any job is training right now (not queued, not paused): background chores wait for it."""
        with self._cond:
            return any(job.state == RUNNING for job in self._active)

    def threads_per_job(self) -> int:
        """The PyTorch threads each job trains on (the System tab shows it beside a request's)."""
        return self.threads or max(1, DEFAULT_THREADS // self.max_concurrent)

    def cancel(self, job_id: str, session: str) -> JobStatus:
        """A queued job is dropped at once; a running one stops at its next should_stop(). Finished: no-op."""
        with self._cond:
            job = self._get(job_id, session)
            self._cancel(job)
            return self._snapshot(job)

    def pause(self, job_id: str, session: str) -> JobStatus:
        """The job's next should_stop() blocks until resume or cancel. The clock stops while paused."""
        with self._cond:
            job = self._get(job_id, session)
            if job.state == RUNNING:
                job.active_s, job.active_since = job.elapsed(), None
                job.state = PAUSED
                self._cond.notify_all()
            elif job.state != PAUSED:
                raise UserError(f"Only a running job can be paused; job {job.name!r} is {job.state}.")
            return self._snapshot(job)

    def resume(self, job_id: str, session: str) -> JobStatus:
        with self._cond:
            job = self._get(job_id, session)
            if job.state == PAUSED:
                self._unpause(job)
            elif job.state != RUNNING:
                raise UserError(f"Only a paused job can be resumed; job {job.name!r} is {job.state}.")
            return self._snapshot(job)

    def discard(self, job_id: str, session: str) -> None:
        """Forget a job and delete its workdir. A job still queued or running is cancelled first."""
        with self._cond:
            job = self._get(job_id, session)
            self._cancel(job)
            del self._jobs[job.id]
            job.discarded = True
            job.best = job.result = None
            workdir = None
            if job not in self._active:  # a running job's thread removes its workdir when it ends
                workdir, job.workdir = job.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def wait(self, job_id: str, session: str, timeout: float | None = None) -> JobStatus:
        """Block until the job ends (or timeout seconds pass) and return its status."""
        with self._cond:
            job = self._get(job_id, session)
            self._cond.wait_for(lambda: job.state in FINAL_STATES, timeout)
            return self._snapshot(job)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Cancel every job, refuse new ones, and give running threads `timeout` seconds to end."""
        with self._cond:
            self._closed = True
            for job in list(self._queue) + list(self._active):
                self._cancel(job)
            threads = [job.thread for job in self._active if job.thread is not None]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.backend.close()  # a worker still running after the timeout is killed

    def describe(self) -> dict:
        """Where jobs run (the System tab): the backend, its workers or cluster nodes, and which job runs where."""
        info = self.backend.describe()
        with self._cond:
            info["jobs"] = [{"job": job.name, "id": job.id[:8], "state": job.state, "node": job.node}
                            for job in self._active]
        return info

    # ---- internals (the ones ending in a verb are called with the lock held) ---------------------------

    def _get(self, job_id: str, session: str) -> _Job:
        """Another session's job is reported exactly like a missing one, so ids reveal nothing."""
        job = self._jobs.get(job_id)
        if job is None or job.session != session:
            raise UserError(f"No such job: {job_id!r}.")
        return job

    def _prune(self, session: str) -> list[Path]:
        """Forget all but the newest `keep_finished` finished jobs of a session, so that a long-lived server
        does not pile up results and model folders; returns the workdirs to delete (outside the lock)."""
        finished = [job for job in self._jobs.values() if job.session == session and job.state in FINAL_STATES]
        workdirs = []
        for job in finished[:max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]
            job.discarded, job.best, job.result = True, None, None
            if job.workdir is not None:
                workdirs.append(job.workdir)
                job.workdir = None
        return workdirs

    def _cancel(self, job: _Job) -> None:
        if job.state == QUEUED:
            self._queue.remove(job)
            job.state, job.finished = CANCELLED, time.time()
        elif job.state in (RUNNING, PAUSED):
            job.cancel_requested = True
            if job.state == PAUSED:
                self._unpause(job)  # wake the blocked should_stop() so it can return True
        self._cond.notify_all()

    def _unpause(self, job: _Job) -> None:
        job.state, job.active_since = RUNNING, time.monotonic()
        self._cond.notify_all()

    def _start_queued(self) -> None:
        while self._queue and len(self._active) < self.max_concurrent:
            job = self._queue.pop(0)
            job.state, job.started, job.active_since = RUNNING, time.time(), time.monotonic()
            self._active.add(job)
            job.thread = threading.Thread(target=self._run, args=(job,), name=f"minilab-job-{job.id[:8]}",
                                          daemon=True)
            job.thread.start()
        self._cond.notify_all()

    def _should_stop(self, job: _Job) -> bool:
        with self._cond:
            while job.state == PAUSED and not job.cancel_requested:
                self._cond.wait()
            return self._wanted(job) == "stop"

    def _wanted(self, job: _Job) -> str:
        """What the job should be doing now: run, pause or stop. Called with the lock held; never blocks."""
        if job.begun and not job.cancel_requested and not job.timed_out and job.time_limit_s is not None \
                and job.elapsed() >= job.time_limit_s:
            job.timed_out = True
        if job.cancel_requested or job.timed_out:
            return "stop"
        return "pause" if job.state == PAUSED else "run"

    def _control(self, job: _Job, workdir: Path) -> JobControl:
        def report(event: dict) -> None:
            with self._cond:
                job.events.append(event)
                job.progress = event

        def save_best(obj: Any) -> None:
            with self._cond:
                job.best = obj

        def wanted() -> str:
            with self._cond:
                return self._wanted(job)

        def placed(node: str) -> None:
            with self._cond:
                job.node = node

        def started() -> None:
            with self._cond:
                job.begun, job.active_s = True, 0.0
                if job.active_since is not None:
                    job.active_since = time.monotonic()

        context = JobContext(job.id, workdir, dict(job.config), report, lambda: self._should_stop(job), save_best)
        return JobControl(job.fn, context, self.threads_per_job(), self.nice, wanted, placed, started, list(job.inputs))

    def _run(self, job: _Job) -> None:
        """The body of a job's supervising thread: make the workdir, run fn on the backend, record how it ended,
        start the next job."""
        returned, error, forced = None, None, None
        try:
            workdir = Path(tempfile.mkdtemp(prefix="minilab-job-"))
            with self._cond:
                job.workdir = workdir
            returned = self.backend.run(self._control(job, workdir))
        except JobStopped as stop:  # cancelled or out of time, and stopped by force: the best so far stays
            forced = str(stop)
        except BaseException as exc:  # noqa: BLE001 - whatever fn raises, the slot must be freed
            # Keep only text: the exception's frames may hold big tensors (think MemoryError).
            error = _describe(exc)
            if not isinstance(exc, (UserError, JobFailed)):
                traceback.print_exc()  # a bug, not a user mistake: leave the full story in the server log
        if error is not None and job.workdir is not None:
            shutil.rmtree(job.workdir, ignore_errors=True)  # gone before the job reads as failed
        with self._cond:
            job.active_s, job.active_since, job.finished = job.elapsed(), None, time.time()
            if error is not None:
                job.state, job.error, job.reason, job.best, job.workdir = FAILED, error, error, None, None
            else:
                job.state = CANCELLED if job.cancel_requested else TIMED_OUT if job.timed_out else SUCCEEDED
                job.result = returned if returned is not None else job.best
                job.reason = forced
            leftover = None
            if job.discarded:
                leftover, job.workdir, job.best, job.result = job.workdir, None, None, None
            self._active.discard(job)
            self._start_queued()  # also wakes everyone waiting on this job
        if leftover is not None:
            shutil.rmtree(leftover, ignore_errors=True)

    def _snapshot(self, job: _Job) -> JobStatus:
        position = self._queue.index(job) + 1 if job.state == QUEUED else 0
        return JobStatus(id=job.id, name=job.name, state=job.state, queue_position=position,
                         progress=dict(job.progress), events=[dict(event) for event in job.events],
                         elapsed=job.elapsed(), error=job.error, result=job.result, created=job.created,
                         started=job.started, finished=job.finished, config=dict(job.config),
                         backend=self.backend.name, node=job.node, reason=job.reason)


def _describe(exc: BaseException) -> str:
    """One line a user can read: a UserError's own words, else 'ExceptionClass: message'."""
    message = " ".join(str(exc).split())
    if isinstance(exc, (UserError, JobFailed)) and message:
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def lower_thread_priority(nice: int) -> None:
    """Make the calling thread (and the PyTorch worker threads it starts later) yield the CPU to the web server's
    threads. On Linux a thread id passed to setpriority changes that thread alone; elsewhere this does nothing."""
    if nice <= 0 or not hasattr(os, "setpriority") or not hasattr(threading, "get_native_id"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, nice))
    except OSError:  # not allowed here: run at normal priority
        pass


def return_free_memory() -> None:
    """Hand the memory a finished job freed back to the operating system. A training job allocates and frees
    hundreds of megabytes; glibc keeps freed blocks in per-thread heaps for reuse, so a server that runs job
    after job would otherwise look as if it grew. Linux with glibc only; elsewhere this does nothing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# ---- one runner per process, configured from the environment ----------------------------------------

_default: JobRunner | None = None
_default_lock = threading.Lock()


def default_runner() -> JobRunner:
    """The process-wide runner, from MINILAB_MAX_JOBS (1), MINILAB_JOB_TIME_LIMIT (600 s; 0 means none),
    MINILAB_MAX_QUEUED (32), MINILAB_JOB_THREADS (0: the cores, divided among the jobs that run at once),
    MINILAB_JOB_NICE (19: training threads run at the lowest priority, so pages and predictions stay quick while
    a job trains), MINILAB_KEEP_JOBS (5 finished jobs kept per browser) and the backend: MINILAB_JOB_BACKEND
    (process; or thread), or ray whenever MINILAB_RAY_ADDRESS is set. Created on first use, under a lock so two
    threads never make two."""
    global _default
    with _default_lock:
        if _default is None:
            limit = _env_number("MINILAB_JOB_TIME_LIMIT", 600.0, float)
            _default = JobRunner(max_concurrent=_env_number("MINILAB_MAX_JOBS", 1, int),
                                 time_limit_s=limit if limit > 0 else None,
                                 max_queued=_env_number("MINILAB_MAX_QUEUED", 32, int),
                                 threads=_env_number("MINILAB_JOB_THREADS", 0, int) or None,
                                 keep_finished=_env_number("MINILAB_KEEP_JOBS", 5, int),
                                 nice=_env_number("MINILAB_JOB_NICE", 19, int), backend=backend_from_env())
        return _default


def backend_from_env() -> str:
    """ray when MINILAB_RAY_ADDRESS is set, else MINILAB_JOB_BACKEND (default: process)."""
    if os.environ.get("MINILAB_RAY_ADDRESS", "").strip():
        return "ray"
    return os.environ.get("MINILAB_JOB_BACKEND", "").strip().lower() or "process"


def _env_number(name: str, default, cast):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return cast(raw)
    except ValueError as error:
        raise UserError(f"{name} must be a number, got {raw!r}.") from error
