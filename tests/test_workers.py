"""Jobs in worker processes (engine.workers): the JobRunner API unchanged, and the faults a thread could not survive.

Every job function here is module-level (a worker process imports it by name). Jobs tell the test what they are
doing through files in their workdir or through progress events, never through shared memory.
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import time
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.jobs import JobRunner
from engine.workers import ProcessBackend, Worker

WAIT = 60.0  # generous: a worker process imports torch before it starts (2-4 s on 2 busy cores)


# ---- job functions (module-level, so they pickle by name) ---------------------------------------------------

def count_until_stopped(ctx, best_at: int = 3):
    """Report a step every 10 ms; hand back the best so far at step `best_at`; return where it stopped."""
    step = 0
    while not ctx.should_stop():
        step += 1
        ctx.report(step=step, pid=os.getpid())
        if step == best_at:
            folder = ctx.workdir / "best"
            folder.mkdir()
            (folder / "weights.txt").write_text("step 3")
            ctx.save_best({"folder": str(folder), "step": step})
        time.sleep(0.01)
    return None  # nothing better than the best so far


def finish(ctx, steps: int = 5):
    for step in range(steps):
        ctx.report(step=step, pid=os.getpid())
    return {"pid": os.getpid(), "workdir": str(ctx.workdir), "config": ctx.config}


def fail_like_a_user(ctx):
    raise UserError("The upload holds no images.")


def fail_like_a_bug(ctx):
    raise ValueError("shapes do not match")


def eat_memory(ctx):
    """Allocate and touch 50 MB at a time until something stops it."""
    hoard = []
    ctx.report(pid=os.getpid())
    while True:
        block = bytearray(50 * 1024 * 1024)
        block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just reserved
        hoard.append(block)
        time.sleep(0.01)


def stuck_in_native_call(ctx):
    """Save a best model, then sit in one C call for ten minutes without ever looking at the stop flag."""
    ctx.save_best({"folder": "kept", "step": 1})
    ctx.report(pid=os.getpid())
    ctypes.CDLL(None).sleep(600)
    return {"folder": "never"}


def unpicklable_result(ctx):
    return lambda: None


# ---- helpers -------------------------------------------------------------------------------------------------

@pytest.fixture
def runner():
    made = []

    def make(**backend_options) -> JobRunner:
        made.append(JobRunner(max_concurrent=2, backend=ProcessBackend(**backend_options)))
        return made[-1]

    yield make
    for each in made:
        each.shutdown(timeout=10)


def wait_for_event(runner: JobRunner, job_id: str, session: str, key: str = "pid") -> dict:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        status = runner.status(job_id, session)
        if key in status.progress:
            return status.progress
        assert not status.done, f"the job ended early: {status.state} {status.error}"
        time.sleep(0.05)
    raise AssertionError("the job never reported")


def another_user_is_served(runner: JobRunner) -> None:
    """While one job is in trouble, a second browser's job runs to the end in its own worker."""
    job_id = runner.submit("bob", functools.partial(finish, steps=3))
    status = runner.wait(job_id, "bob", timeout=WAIT)
    assert status.state == "succeeded", status.error
    assert status.result["pid"] != os.getpid()


# ---- the API, unchanged --------------------------------------------------------------------------------------

def test_a_job_runs_in_its_own_process_and_hands_back_its_result(runner):
    jobs = runner()
    job_id = jobs.submit("alice", functools.partial(finish, steps=4), name="finetune-image", config={"lr": 0.1})
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "succeeded", status.error
    assert status.result["pid"] != os.getpid()  # not this process
    assert status.result["config"] == {"lr": 0.1} and Path(status.result["workdir"]).is_dir()
    assert [event["step"] for event in status.events] == [0, 1, 2, 3]
    assert status.backend == "process" and f"pid {status.result['pid']}" in status.node
    assert status.reason is None
    with pytest.raises(UserError):
        jobs.status(job_id, "mallory")  # ownership as before


def test_pause_resume_and_cancel_keep_the_best_model(runner):
    jobs = runner()
    job_id = jobs.submit("alice", count_until_stopped)
    wait_for_event(jobs, job_id, "alice")
    while jobs.status(job_id, "alice").progress["step"] < 5:
        time.sleep(0.02)
    jobs.pause(job_id, "alice")
    time.sleep(0.5)  # the worker hears the pause within a poll (0.1 s) and blocks at its next stop check
    paused_at = jobs.status(job_id, "alice").progress["step"]
    time.sleep(0.5)
    assert jobs.status(job_id, "alice").progress["step"] == paused_at
    jobs.resume(job_id, "alice")
    deadline = time.monotonic() + WAIT
    while jobs.status(job_id, "alice").progress["step"] <= paused_at + 3:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    jobs.cancel(job_id, "alice")
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "cancelled" and status.reason is None  # it obeyed the flag
    assert status.result["step"] == 3 and Path(status.result["folder"], "weights.txt").read_text() == "step 3"


def test_time_limit(runner):
    jobs = runner()
    job_id = jobs.submit("alice", count_until_stopped, time_limit_s=1.0)
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "timed_out" and status.result["step"] == 3


def test_errors_come_back_as_one_line(runner):
    jobs = runner()
    user = jobs.wait(jobs.submit("alice", fail_like_a_user), "alice", timeout=WAIT)
    assert user.state == "failed" and user.error == "The upload holds no images." == user.reason
    bug = jobs.wait(jobs.submit("alice", fail_like_a_bug), "alice", timeout=WAIT)
    assert bug.state == "failed" and bug.error == "ValueError: shapes do not match"
    odd = jobs.wait(jobs.submit("alice", unpicklable_result), "alice", timeout=WAIT)
    assert odd.state == "failed" and "could not be sent back" in odd.error


def test_a_job_must_be_picklable(runner):
    with pytest.raises(TypeError, match="picklable"):
        runner().submit("alice", lambda ctx: None)


def test_the_spare_worker_takes_the_next_job(runner):
    jobs = runner()
    jobs.backend.prewarm(jobs.nice)
    spare = [w["pid"] for w in jobs.describe()["workers"] if w["job"].startswith("(spare")]
    assert len(spare) == 1
    status = jobs.wait(jobs.submit("alice", finish), "alice", timeout=WAIT)
    assert status.result["pid"] == spare[0]
    assert any(w["job"].startswith("(spare") for w in jobs.describe()["workers"])  # and a new one waits


def test_a_worker_whose_server_is_gone_exits():
    worker = Worker(nice=0)
    worker.conn.close()  # what a killed server leaves behind
    assert worker.process.wait(timeout=WAIT) is not None


# ---- faults --------------------------------------------------------------------------------------------------

def test_a_worker_killed_with_sigkill_fails_the_job_with_a_reason(runner):
    jobs = runner()
    job_id = jobs.submit("alice", count_until_stopped)
    pid = wait_for_event(jobs, job_id, "alice")["pid"]
    os.kill(pid, signal.SIGKILL)
    another_user_is_served(jobs)
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "failed" and "SIGKILL" in status.reason and "memory" in status.reason
    assert status.result is None


def test_a_job_that_eats_memory_is_stopped_and_others_go_on(runner):
    jobs = runner(memory_mb=800)
    job_id = jobs.submit("alice", eat_memory)
    wait_for_event(jobs, job_id, "alice")
    another_user_is_served(jobs)
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "failed" and "memory" in status.reason and "800 MB" in status.reason


def test_a_job_stuck_in_a_native_call_is_stopped_by_force_keeping_its_best(runner):
    jobs = runner(grace_s=1.0)
    job_id = jobs.submit("alice", stuck_in_native_call)
    pid = wait_for_event(jobs, job_id, "alice")["pid"]
    started = time.monotonic()
    jobs.cancel(job_id, "alice")
    another_user_is_served(jobs)
    status = jobs.wait(job_id, "alice", timeout=WAIT)
    assert time.monotonic() - started < 20
    assert status.state == "cancelled" and "by force" in status.reason
    assert status.result == {"folder": "kept", "step": 1}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # the worker is gone
