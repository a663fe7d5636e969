"""Worker processes: the app's default place for a training job (engine.jobs' "process" backend).

Why a process per job: a thread in the web server shares its interpreter lock and cores, so training made every
page slower; a crash in native code or an out-of-memory kill took every user down with it; and a cancel could
not interrupt a long native call. A job in its own process has none of these problems:

- The parent (this module's ProcessBackend, one supervising thread per job) starts `python -m engine.workers`
  with one end of a socket pair. Child and parent talk in pickled messages over it (a trusted channel: both ends
  are ours). Parent -> child: the job, then "run" / "pause" / "stop". Child -> parent: ("started", None) as the
  training function starts, ("event", dict), ("best", obj), then ("result", obj) or ("error", one line).
- Spawned, not forked: a fork of a threaded web server can inherit a lock held by some other thread.
- Start-up: importing torch takes seconds, so one spare worker waits with torch imported; a job takes it and
  a new spare starts behind it at the lowest priority. A job therefore starts in well under a second.
- Stop: the stop flag first; if the job has not ended `grace_s` seconds later (stuck in a native call), its
  process is killed. The best model it reported so far (save_best) is kept; models are written atomically
  (engine.checkpoints.save_model), so a kill never leaves a half-written one.
- Memory: the parent watches the worker's resident memory and kills it above `memory_mb`; the worker also
  volunteers as the kernel's first choice when the machine runs out (oom_score_adj 1000), so the server lives.
- Every way a worker can end becomes a one-line reason in the job's status.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # engine.jobs imports torch: a worker must not, before it has lowered its priority
    from engine.jobs import JobContext, JobControl

ROOT = Path(__file__).resolve().parents[1]
POLL_S = 0.1  # how often a supervising thread checks for messages, the stop wish, and the worker's memory


def env_float(name: str, default: float) -> float:
    """A number from the environment; the default when unset or unreadable."""
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError:
        return default


def default_memory_mb() -> float:
    """Half of the machine's memory: a job may be big, but never big enough to starve the server."""
    try:
        total_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal:"))
        return total_kb / 1024 / 2
    except (OSError, StopIteration, ValueError):
        return 8192.0


def job_cpus() -> set[int] | None:
    """The CPUs training jobs may use: MINILAB_JOB_CPUS ("1", "2-7", "1,3"; "all"), by default every CPU but the
    first when there are two or more, so that the web server always has one core no job has warmed its caches on.
    None: no restriction."""
    raw = os.environ.get("MINILAB_JOB_CPUS", "").strip().lower()
    if not hasattr(os, "sched_getaffinity") or raw == "all":
        return None
    available = sorted(os.sched_getaffinity(0))
    if not raw:
        return set(available[1:]) if len(available) >= 2 else None
    chosen = set()
    for part in raw.split(","):
        first, _, last = part.partition("-")
        try:
            chosen.update(range(int(first), int(last or first) + 1))
        except ValueError:
            return None
    return (chosen & set(available)) or None


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc); 0 where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return 0.0


def exit_reason(code: int) -> str:
    """A worker's exit status in words."""
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        if -code == signal.SIGKILL:
            return ("its worker process was killed (SIGKILL), most likely by the system for lack of memory; "
                    "try a smaller model, batch or upload")
        return f"its worker process was stopped by {name}"
    return f"its worker process exited with code {code} before sending a result (see the server log)"


def send(conn: Connection, message) -> None:
    """Plain pickle, not Connection.send: once torch is imported, multiprocessing's pickler passes tensors as shared
    memory handed over by a helper that only its own child processes may call (our workers are not those)."""
    conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(conn: Connection):
    return pickle.loads(conn.recv_bytes())


class Worker:
    """One spawned worker process and the parent's end of its socket."""

    def __init__(self, nice: int):
        parent_end, child_end = socket.socketpair()
        env = dict(os.environ, MINILAB_WORKER_SYSPATH=json.dumps([p for p in sys.path if p]))
        self.started = time.monotonic()
        # A new session: Ctrl-C in the server's terminal reaches the server, which then stops its jobs itself.
        self.process = subprocess.Popen([sys.executable, "-m", "engine.workers", str(child_end.fileno()), str(nice)],
                                        pass_fds=[child_end.fileno()], env=env, cwd=ROOT, start_new_session=True)
        child_end.close()
        self.conn = Connection(parent_end.detach())
        self.pid = self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.pid, signal.SIGKILL)  # the worker and anything it started
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()


class ProcessBackend:
    """Runs each job in its own spawned worker process (see the module docstring)."""

    name = "process"

    def __init__(self, grace_s: float | None = None, memory_mb: float | None = None, spare: bool = True):
        self.grace_s = env_float("MINILAB_CANCEL_GRACE", 10.0) if grace_s is None else grace_s
        self.memory_mb = (memory_mb if memory_mb is not None
                          else env_float("MINILAB_JOB_MEMORY_MB", 0.0) or default_memory_mb())
        self.keep_spare = spare
        self._lock = threading.Lock()
        self._spare: Worker | None = None
        self._spare_nice = 19
        self._running: dict[int, tuple[Worker, str]] = {}  # pid -> (worker, job id)
        self._closed = False

    def prewarm(self, nice: int = 19) -> None:
        """Start the spare worker now (the app calls this once its models are loaded)."""
        with self._lock:
            if self.keep_spare and not self._closed and (self._spare is None or not self._spare.alive()):
                self._spare_nice = nice
                self._spare = Worker(nice)

    def _take(self, nice: int) -> Worker:
        """The spare worker if it is alive and has the right priority, else a new one; a new spare starts behind."""
        with self._lock:
            worker, self._spare = self._spare, None
        if worker is not None and (not worker.alive() or self._spare_nice != nice):
            worker.kill()
            worker = None
        if worker is None:
            worker = Worker(nice)
        self.prewarm(nice)
        return worker

    def run(self, control: JobControl) -> object:
        ctx: JobContext = control.context
        worker = self._take(control.nice)
        with self._lock:
            self._running[worker.pid] = (worker, ctx.job_id)
        control.placed(f"worker pid {worker.pid} on {socket.gethostname()}")
        try:
            return self._supervise(worker, control)
        finally:
            with self._lock:
                self._running.pop(worker.pid, None)
            worker.kill()  # normally already gone; a no-op then

    def _supervise(self, worker: Worker, control: JobControl) -> object:
        """Relay messages both ways until the worker ends, then turn how it ended into a result or an exception."""
        from engine.jobs import JobFailed, JobStopped

        ctx = control.context
        try:
            send(worker.conn, ("job", control.fn, ctx.job_id, str(ctx.workdir), ctx.config, control.threads))
        except OSError as error:
            raise JobFailed(f"the job could not be handed to its worker process: {error}") from None
        sent, stop_since, outcome, killed_for = "run", None, None, None

        def relay(timeout: float):
            """Pass on what the worker said; the first ("result" | "error", payload), if it came, else None."""
            try:
                ready = worker.conn.poll(timeout)
                for _ in range(1000):  # what has arrived, but not forever: a chatty job must not starve the checks
                    if not ready:
                        return None
                    kind, payload = receive(worker.conn)
                    if kind == "event":
                        ctx.report(**payload)
                    elif kind == "started":
                        control.started()
                    elif kind == "best":
                        ctx.save_best(payload)
                    else:  # "result" or "error": the worker exits right after
                        return kind, payload
                    ready = worker.conn.poll(0)
            except (EOFError, OSError):
                pass  # the worker is gone; its exit status says why
            return None

        while True:
            outcome = relay(POLL_S)
            if outcome is not None:
                break
            if not worker.alive():
                outcome = relay(0)  # its last words may have arrived just before it exited
                break
            wanted = control.wanted()
            if wanted != sent:
                try:
                    send(worker.conn, wanted)
                    sent = wanted
                except OSError:
                    pass
            if wanted == "stop":
                stop_since = stop_since or time.monotonic()
                if time.monotonic() - stop_since > self.grace_s:
                    killed_for = (f"stopped by force {self.grace_s:g} s after the stop request: it did not reach "
                                  "its next stop check (a long native call?)")
                    break
            memory = rss_mb(worker.pid)
            if memory > self.memory_mb:
                killed_for = (f"stopped: its worker process used {memory:.0f} MB of memory, over the job limit of "
                              f"{self.memory_mb:.0f} MB (MINILAB_JOB_MEMORY_MB)")
                break
        if killed_for is not None:
            worker.kill()
            if killed_for.startswith("stopped by force"):
                raise JobStopped(killed_for)
            raise JobFailed(killed_for)
        if outcome is None:  # died without a word: a signal, the kernel's OOM killer, os._exit
            try:
                code = worker.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = -signal.SIGKILL
            raise JobFailed(exit_reason(code))
        kind, payload = outcome
        if kind == "error":
            raise JobFailed(payload)
        return payload

    def describe(self) -> dict:
        with self._lock:
            workers = [{"pid": pid, "job": job_id[:8], "rss_mb": round(rss_mb(pid))}
                       for pid, (_, job_id) in self._running.items()]
            if self._spare is not None and self._spare.alive():
                workers.append({"pid": self._spare.pid, "job": "(spare, waiting)", "rss_mb": round(rss_mb(self._spare.pid))})
        return {"backend": self.name, "host": socket.gethostname(), "workers": workers,
                "cancel_grace_s": self.grace_s, "memory_limit_mb": round(self.memory_mb)}

    def close(self) -> None:
        """Kill the spare and any worker still running (the runner has already asked them to stop)."""
        with self._lock:
            self._closed = True
            workers = [worker for worker, _ in self._running.values()]
            if self._spare is not None:
                workers.append(self._spare)
            self._spare = None
        for worker in workers:
            worker.kill()


# ---- the worker's side ------------------------------------------------------------------------------------

def make_way_for_the_server(nice: int, pin: bool) -> None:
    """Lower the calling thread (and every thread it starts later, PyTorch's included) below the web server:
    nice, Linux's idle class at nice 19 (the CPU time the server leaves; a waking request never waits for a job),
    the cores of job_cpus() when `pin`, and first in line for the kernel's out-of-memory killer. Called before
    torch is imported where possible. Each step is skipped where the system does not allow it."""
    steps = []
    if nice > 0 and hasattr(os, "nice"):
        steps.append(lambda: os.nice(min(19, nice)))
    if nice >= 19 and hasattr(os, "SCHED_IDLE"):
        steps.append(lambda: os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0)))
    cpus = job_cpus() if pin else None
    if cpus:
        steps.append(lambda: os.sched_setaffinity(0, cpus))
    steps.append(lambda: Path("/proc/self/oom_score_adj").write_text("1000"))
    for step in steps:
        try:
            step()
        except OSError:
            pass


def worker_main(fd: int, nice: int) -> None:
    """Wait for one job, run it, send back how it ended, exit. Runs in the spawned process."""
    conn = Connection(fd)
    make_way_for_the_server(nice, pin=True)
    import torch  # noqa: F401 - the slow import, done while the worker waits as a spare

    from engine.device import set_threads
    from engine.jobs import JobContext, _describe

    try:
        message = receive(conn)
    except (EOFError, OSError):
        return  # the server went away (or closed the spare) before handing over a job
    except Exception as error:  # noqa: BLE001 - a job function this process cannot import, say
        send(conn, ("error", f"the worker could not load the job: {type(error).__name__}: {error}"))
        return
    _, fn, job_id, workdir, config, threads = message
    set_threads(threads)
    state = {"wanted": "run"}
    changed = threading.Condition()
    send_lock = threading.Lock()

    def listen() -> None:
        """The parent's wishes, as they come; if the parent is gone, so is the job."""
        while True:
            try:
                wish = receive(conn)
            except (EOFError, OSError):
                os._exit(3)
            with changed:
                state["wanted"] = wish
                changed.notify_all()

    def tell(kind: str, payload) -> None:
        with send_lock:
            send(conn, (kind, payload))

    def should_stop() -> bool:
        with changed:
            while state["wanted"] == "pause":
                changed.wait()
            return state["wanted"] == "stop"

    threading.Thread(target=listen, name="minilab-worker-listen", daemon=True).start()
    ctx = JobContext(job_id, Path(workdir), config, lambda event: tell("event", event), should_stop,
                     lambda obj: tell("best", obj))
    try:
        tell("started", None)
        result = fn(ctx)
        try:
            tell("result", result)
        except Exception as error:  # noqa: BLE001 - an unpicklable result is a bug in the job function
            tell("error", f"the job's result could not be sent back: {type(error).__name__}: {error}")
    except BaseException as exc:  # noqa: BLE001 - every ending is reported
        from engine.errors import UserError

        if not isinstance(exc, UserError):
            traceback.print_exc()  # into the server's log: the worker shares its stderr
        try:
            tell("error", _describe(exc))
        except OSError:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip the interpreter's slow teardown: everything that matters has been sent


if __name__ == "__main__":
    sys.path[:0] = [p for p in json.loads(os.environ.get("MINILAB_WORKER_SYSPATH", "[]")) if p not in sys.path]
    worker_main(int(sys.argv[1]), int(sys.argv[2]))
