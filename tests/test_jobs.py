"""The job runner: progress, results, cancel/pause/resume, queueing, sessions, failures, time limits, cleanup.

Jobs synchronise with the tests through threading.Events, so nothing depends on guessing how long a step takes.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from engine import jobs as jobs_module
from engine.errors import UserError
from engine.jobs import JobContext, JobRunner

WAIT = 5.0  # upper bound for anything the tests wait on; normally reached in milliseconds


@pytest.fixture
def make_runner():
    """Build runners that are shut down (and their blocked jobs released) after the test."""
    runners, gates = [], []

    def make(**kwargs) -> JobRunner:
        runner = JobRunner(**kwargs)
        runners.append(runner)
        return runner

    make.gates = gates
    yield make
    for gate in gates:
        gate.set()
    for runner in runners:
        runner.shutdown(timeout=WAIT)


def gate_for(make_runner) -> threading.Event:
    gate = threading.Event()
    make_runner.gates.append(gate)
    return gate


def blocker(gate: threading.Event, started: threading.Event | None = None, log: list | None = None, tag=None):
    """A job that (optionally) says it started, then waits for the gate, then returns its tag."""
    def fn(ctx: JobContext):
        if log is not None:
            log.append(tag)
        if started is not None:
            started.set()
        assert gate.wait(WAIT)
        return tag
    return fn


def run_until_stopped(ctx: JobContext):
    """A training loop in miniature: one tiny step, then check should_stop()."""
    while not ctx.should_stop():
        time.sleep(0.002)


def test_progress_events_recorded_and_latest_exposed(make_runner):
    runner = make_runner()
    reported, gate = threading.Event(), gate_for(make_runner)

    def train(ctx: JobContext):
        for step in range(1, 4):
            ctx.report(step=step, steps=5, metrics={"loss": 1.0 / step})
        reported.set()
        assert gate.wait(WAIT)
        ctx.report(step=5, steps=5, metrics={"loss": 0.1})
        return {"model": "trained"}

    job_id = runner.submit("alice", train, name="finetune", config={"lr": 0.1})
    assert reported.wait(WAIT)
    live = runner.status(job_id, "alice")
    assert live.state == "running" and live.result is None and not live.done
    assert live.progress == {"step": 3, "steps": 5, "metrics": {"loss": 1.0 / 3}}
    assert [event["step"] for event in live.events] == [1, 2, 3]

    gate.set()
    final = runner.wait(job_id, "alice", timeout=WAIT)
    assert final.state == "succeeded" and final.done and final.error is None
    assert final.result == {"model": "trained"}
    assert final.progress["step"] == 5
    assert [event["step"] for event in final.events] == [1, 2, 3, 5]
    assert final.name == "finetune" and final.config == {"lr": 0.1} and final.queue_position == 0
    assert final.created <= final.started <= final.finished
    assert final.elapsed >= 0
    live.events.clear()  # snapshots are copies: changing one does not touch the job
    assert len(runner.status(job_id, "alice").events) == 4


def test_events_are_bounded(make_runner, monkeypatch):
    monkeypatch.setattr(jobs_module, "MAX_EVENTS", 5)
    runner = make_runner()

    def train(ctx: JobContext):
        for step in range(12):
            ctx.report(step=step)

    status = runner.wait(runner.submit("alice", train), "alice", timeout=WAIT)
    assert [event["step"] for event in status.events] == [7, 8, 9, 10, 11]
    assert status.progress == {"step": 11}


def test_cancel_running_job_keeps_best_model_so_far(make_runner):
    runner = make_runner()
    saved, seen = threading.Event(), {}

    def train(ctx: JobContext):
        seen["workdir"] = ctx.workdir
        (ctx.workdir / "best.pt").write_text("weights")
        ctx.save_best({"epoch": 1})
        ctx.save_best({"epoch": 2})
        saved.set()
        run_until_stopped(ctx)
        return None  # nothing better to hand back: the runner falls back to save_best

    job_id = runner.submit("alice", train)
    assert saved.wait(WAIT)
    runner.cancel(job_id, "alice")
    status = runner.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "cancelled"
    assert status.result == {"epoch": 2}
    assert (seen["workdir"] / "best.pt").read_text() == "weights"  # kept: the result model lives there


def test_cancelled_job_returning_a_value_hands_that_back(make_runner):
    runner = make_runner()
    started = threading.Event()

    def train(ctx: JobContext):
        ctx.save_best("best-so-far")
        started.set()
        run_until_stopped(ctx)
        return "final-after-stop"

    job_id = runner.submit("alice", train)
    assert started.wait(WAIT)
    status = runner.wait(runner.cancel(job_id, "alice").id, "alice", timeout=WAIT)
    assert (status.state, status.result) == ("cancelled", "final-after-stop")


def test_cancel_queued_job_never_runs_it(make_runner):
    runner = make_runner(max_concurrent=1)
    gate, started, ran = gate_for(make_runner), threading.Event(), threading.Event()
    first = runner.submit("alice", blocker(gate, started))
    assert started.wait(WAIT)
    second = runner.submit("alice", lambda ctx: ran.set())
    third = runner.submit("alice", lambda ctx: "third")
    assert runner.status(second, "alice").queue_position == 1
    assert runner.status(third, "alice").queue_position == 2

    cancelled = runner.cancel(second, "alice")
    assert cancelled.state == "cancelled" and cancelled.queue_position == 0 and cancelled.started is None
    assert runner.status(third, "alice").queue_position == 1  # moved up

    gate.set()
    assert runner.wait(third, "alice", timeout=WAIT).result == "third"
    assert runner.wait(first, "alice", timeout=WAIT).state == "succeeded"
    assert not ran.is_set()
    assert runner.status(second, "alice").state == "cancelled"


def test_queue_is_fifo_with_positions(make_runner):
    runner = make_runner(max_concurrent=1)
    gate, started, order = gate_for(make_runner), threading.Event(), []
    first = runner.submit("alice", blocker(gate, started, order, "first"))
    assert started.wait(WAIT)
    waiting = [runner.submit("alice", blocker(gate, None, order, tag)) for tag in ("b", "c", "d")]
    assert runner.status(first, "alice").queue_position == 0
    assert [runner.status(job_id, "alice").queue_position for job_id in waiting] == [1, 2, 3]
    assert [runner.status(job_id, "alice").state for job_id in waiting] == ["queued"] * 3

    gate.set()
    for job_id in waiting:
        assert runner.wait(job_id, "alice", timeout=WAIT).state == "succeeded"
    assert order == ["first", "b", "c", "d"]


def test_two_jobs_run_at_once_when_allowed(make_runner):
    runner = make_runner(max_concurrent=2)
    gate = gate_for(make_runner)
    started = [threading.Event() for _ in range(3)]
    ids = [runner.submit("alice", blocker(gate, event)) for event in started]
    assert started[0].wait(WAIT) and started[1].wait(WAIT)  # both run although neither has finished
    assert [runner.status(job_id, "alice").state for job_id in ids] == ["running", "running", "queued"]
    assert runner.status(ids[2], "alice").queue_position == 1
    assert not started[2].is_set()
    gate.set()
    assert all(runner.wait(job_id, "alice", timeout=WAIT).state == "succeeded" for job_id in ids)


def test_sessions_cannot_see_or_touch_each_others_jobs(make_runner):
    runner = make_runner()
    gate, started = gate_for(make_runner), threading.Event()
    job_id = runner.submit("alice", blocker(gate, started))
    assert started.wait(WAIT)

    with pytest.raises(UserError) as missing:
        runner.status("0" * 32, "bob")
    for attempt in (runner.status, runner.cancel, runner.pause, runner.resume, runner.discard, runner.wait):
        with pytest.raises(UserError, match="No such job") as refused:
            attempt(job_id, "bob")
        # word for word what a job that does not exist gets: nothing reveals that the id is real
        assert str(refused.value) == str(missing.value).replace("0" * 32, job_id)

    assert runner.jobs("bob") == []
    assert [status.id for status in runner.jobs("alice")] == [job_id]
    assert runner.status(job_id, "alice").state == "running"  # bob's cancel/pause did nothing
    gate.set()
    assert runner.wait(job_id, "alice", timeout=WAIT).state == "succeeded"


def test_failure_reports_reason_removes_workdir_and_next_job_runs(make_runner):
    runner = make_runner(max_concurrent=1)
    gate, started, seen = gate_for(make_runner), threading.Event(), {}

    def broken(ctx: JobContext):
        seen["workdir"] = ctx.workdir
        (ctx.workdir / "partial.pt").write_text("half")
        ctx.save_best("half a model")
        started.set()
        assert gate.wait(WAIT)
        raise ValueError("bad batch\nshape (3, 2)")

    failing = runner.submit("alice", broken)
    assert started.wait(WAIT)
    following = runner.submit("alice", lambda ctx: "next one ran")
    assert runner.status(following, "alice").state == "queued"
    gate.set()

    failed = runner.wait(failing, "alice", timeout=WAIT)
    assert failed.state == "failed"
    assert failed.error == "ValueError: bad batch shape (3, 2)"  # one line
    assert failed.result is None
    assert not seen["workdir"].exists()
    assert runner.wait(following, "alice", timeout=WAIT).result == "next one ran"


def test_user_error_is_reported_in_its_own_words(make_runner):
    runner = make_runner()

    def train(ctx: JobContext):
        raise UserError("The dataset has only one class; add images of a second class.")

    status = runner.wait(runner.submit("alice", train), "alice", timeout=WAIT)
    assert status.state == "failed"
    assert status.error == "The dataset has only one class; add images of a second class."


def test_memory_error_is_a_clear_failure(make_runner):
    runner = make_runner()

    def train(ctx: JobContext):
        raise MemoryError("out of memory")

    first = runner.submit("alice", train)
    status = runner.wait(first, "alice", timeout=WAIT)
    assert (status.state, status.error) == ("failed", "MemoryError: out of memory")
    # the slot was freed: another job still runs
    assert runner.wait(runner.submit("alice", lambda ctx: 7), "alice", timeout=WAIT).result == 7


def test_time_limit_stops_job_and_keeps_best(make_runner):
    runner = make_runner(time_limit_s=0.05)

    def train(ctx: JobContext):
        ctx.save_best("best at step 1")
        run_until_stopped(ctx)

    status = runner.wait(runner.submit("alice", train), "alice", timeout=WAIT)
    assert status.state == "timed_out"
    assert status.result == "best at step 1"
    assert status.elapsed >= 0.05


def test_per_job_time_limit_overrides_default(make_runner):
    runner = make_runner(time_limit_s=None)  # no limit by default
    limited = runner.submit("alice", run_until_stopped, time_limit_s=0.05)
    assert runner.wait(limited, "alice", timeout=WAIT).state == "timed_out"
    with pytest.raises(UserError, match="positive"):
        runner.submit("alice", run_until_stopped, time_limit_s=0)


def test_pause_blocks_the_loop_and_resume_continues(make_runner):
    runner = make_runner(time_limit_s=0.3)
    at_step_2, may_continue, past_check = threading.Event(), threading.Event(), threading.Event()
    make_runner.gates.append(may_continue)
    steps = []

    def train(ctx: JobContext):
        for step in range(1, 5):
            if step == 3:
                at_step_2.set()
                assert may_continue.wait(WAIT)
            if ctx.should_stop():
                return "stopped early"
            if step == 3:
                past_check.set()
            steps.append(step)
        return "all steps"

    job_id = runner.submit("alice", train)
    assert at_step_2.wait(WAIT)
    paused = runner.pause(job_id, "alice")
    assert paused.state == "paused"
    may_continue.set()
    # The loop now sits in should_stop(); 0.4 s paused is longer than the 0.3 s time limit.
    assert not past_check.wait(0.4)
    assert steps == [1, 2]
    assert runner.status(job_id, "alice").state == "paused"

    assert runner.resume(job_id, "alice").state == "running"
    status = runner.wait(job_id, "alice", timeout=WAIT)
    assert status.state == "succeeded" and status.result == "all steps"  # paused time did not use up the limit
    assert steps == [1, 2, 3, 4]
    wall = status.finished - status.started
    assert wall >= 0.4 and status.elapsed < wall - 0.3


def test_pause_needs_a_running_job_and_cancel_wakes_a_paused_one(make_runner):
    runner = make_runner(max_concurrent=1)
    started = threading.Event()

    def train(ctx: JobContext):
        ctx.save_best("checkpoint")
        started.set()
        run_until_stopped(ctx)

    running = runner.submit("alice", train)
    queued = runner.submit("alice", lambda ctx: None)
    assert started.wait(WAIT)
    with pytest.raises(UserError, match="Only a running job can be paused"):
        runner.pause(queued, "alice")
    with pytest.raises(UserError, match="Only a paused job can be resumed"):
        runner.resume(queued, "alice")

    assert runner.pause(running, "alice").state == "paused"
    runner.cancel(running, "alice")
    status = runner.wait(running, "alice", timeout=WAIT)
    assert (status.state, status.result) == ("cancelled", "checkpoint")
    assert runner.wait(queued, "alice", timeout=WAIT).state == "succeeded"
    with pytest.raises(UserError, match="Only a running job can be paused"):
        runner.pause(running, "alice")


def test_full_queue_is_refused(make_runner):
    runner = make_runner(max_concurrent=1, max_queued=2)
    gate, started = gate_for(make_runner), threading.Event()
    runner.submit("alice", blocker(gate, started))
    assert started.wait(WAIT)
    runner.submit("alice", blocker(gate))
    runner.submit("bob", blocker(gate))
    with pytest.raises(UserError, match="queue is full"):
        runner.submit("carol", blocker(gate))
    assert len(runner.jobs("carol")) == 0


def test_discard_removes_workdir_and_forgets_job(make_runner):
    runner = make_runner()
    seen = {}

    def train(ctx: JobContext):
        seen["workdir"] = ctx.workdir
        assert ctx.workdir.name.startswith("minilab-job-")
        (ctx.workdir / "model.pt").write_text("weights")
        return "model"

    job_id = runner.submit("alice", train)
    assert runner.wait(job_id, "alice", timeout=WAIT).state == "succeeded"
    assert (seen["workdir"] / "model.pt").exists()  # kept after success
    runner.discard(job_id, "alice")
    assert not seen["workdir"].exists()
    assert runner.jobs("alice") == []
    with pytest.raises(UserError, match="No such job"):
        runner.status(job_id, "alice")


def test_discarding_a_running_job_cancels_it_and_cleans_up(make_runner):
    runner = make_runner()
    started, seen = threading.Event(), {}

    def train(ctx: JobContext):
        seen["workdir"] = ctx.workdir
        started.set()
        run_until_stopped(ctx)

    job_id = runner.submit("alice", train)
    assert started.wait(WAIT)
    runner.discard(job_id, "alice")
    assert runner.jobs("alice") == []
    runner.shutdown(timeout=WAIT)  # joins the job's thread, which removes the workdir as it ends
    assert not seen["workdir"].exists()


def test_wait_with_timeout_returns_the_live_status(make_runner):
    runner = make_runner()
    gate, started = gate_for(make_runner), threading.Event()
    job_id = runner.submit("alice", blocker(gate, started))
    assert started.wait(WAIT)
    assert runner.wait(job_id, "alice", timeout=0.01).state == "running"


def test_shutdown_cancels_everything(make_runner):
    runner = make_runner(max_concurrent=1)
    started, ran = threading.Event(), threading.Event()

    def train(ctx: JobContext):
        started.set()
        run_until_stopped(ctx)

    running = runner.submit("alice", train)
    queued = runner.submit("alice", lambda ctx: ran.set())
    assert started.wait(WAIT)
    runner.shutdown(timeout=WAIT)
    assert runner.status(running, "alice").state == "cancelled"
    assert runner.status(queued, "alice").state == "cancelled"
    assert not ran.is_set()
    with pytest.raises(RuntimeError):
        runner.submit("alice", train)


def test_default_runner_is_configured_from_environment(monkeypatch):
    monkeypatch.setattr(jobs_module, "_default", None)
    monkeypatch.setenv("MINILAB_MAX_JOBS", "3")
    monkeypatch.setenv("MINILAB_JOB_TIME_LIMIT", "90")
    monkeypatch.setenv("MINILAB_MAX_QUEUED", "4")
    runner = jobs_module.default_runner()
    assert (runner.max_concurrent, runner.time_limit_s, runner.max_queued) == (3, 90.0, 4)
    assert jobs_module.default_runner() is runner

    monkeypatch.setattr(jobs_module, "_default", None)
    for name in ("MINILAB_MAX_JOBS", "MINILAB_JOB_TIME_LIMIT", "MINILAB_MAX_QUEUED"):
        monkeypatch.delenv(name)
    runner = jobs_module.default_runner()
    assert (runner.max_concurrent, runner.time_limit_s, runner.max_queued) == (1, 600.0, 32)

    monkeypatch.setattr(jobs_module, "_default", None)
    monkeypatch.setenv("MINILAB_MAX_JOBS", "many")
    with pytest.raises(UserError, match="MINILAB_MAX_JOBS"):
        jobs_module.default_runner()


def test_default_runner_is_created_once_across_threads(monkeypatch):
    monkeypatch.setattr(jobs_module, "_default", None)
    found, barrier = [], threading.Barrier(8)

    def grab():
        barrier.wait()
        found.append(jobs_module.default_runner())

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert len(found) == 8 and all(runner is found[0] for runner in found)


def test_old_finished_jobs_are_forgotten_with_their_files():
    """A long-lived server keeps the newest `keep_finished` finished jobs per session, and deletes the rest."""
    runner = JobRunner(keep_finished=2)
    workdirs = []

    def write(ctx):
        (ctx.workdir / "model.bin").write_bytes(b"x" * 100)
        workdirs.append(ctx.workdir)
        return "ok"

    ids = []
    for _ in range(4):
        ids.append(runner.submit("alice", write))
        runner.wait(ids[-1], "alice", timeout=10)
    runner.submit("bob", write)  # another session's jobs do not count against alice's
    runner.wait(runner.jobs("bob")[0].id, "bob", timeout=10)
    kept = [job.id for job in runner.jobs("alice")]
    # submitting the 4th pruned down to the newest 2 finished (the 4th was still running then)
    assert kept == ids[1:] or kept == ids[2:]
    assert not workdirs[0].exists() and workdirs[3].exists()
    with pytest.raises(UserError, match="No such job"):
        runner.status(ids[0], "alice")
    assert len(runner.jobs("bob")) == 1
    runner.shutdown()


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities are a Linux feature")
def test_job_threads_run_at_low_priority_and_the_server_does_not(make_runner):
    """Training yields the CPU to the web server: the job's own thread is niced, the caller's thread is not."""
    def own_priority(ctx: JobContext):
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    runner = make_runner(nice=19)
    job = runner.submit("a", own_priority)
    assert runner.wait(job, "a", timeout=WAIT).result == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before
    plain = make_runner(nice=0)
    job = plain.submit("a", own_priority)
    assert plain.wait(job, "a", timeout=WAIT).result == before


@pytest.mark.skipif(jobs_module.DEFAULT_THREADS < 2, reason="needs a machine with 2 or more cores")
def test_a_job_trains_on_every_core_after_a_request_ran_on_one(make_runner):
    """A new thread starts with the PyTorch thread count that any thread set last. The web app runs each request
    on 1 thread, so a job started after a request would have trained on 1 core (the Fine-tune tab ran at half the
    speed of the CLI). The runner gives each job thread PyTorch's default count divided among the jobs that may
    run at once, or the count it was configured with."""
    import torch

    from engine.device import use_request_threads

    def thread_count(ctx: JobContext) -> int:
        return torch.get_num_threads()

    before = torch.get_num_threads()
    try:
        use_request_threads()  # what every web request does first
        assert torch.get_num_threads() == 1
        runner = make_runner()
        job = runner.submit("a", thread_count)
        assert runner.wait(job, "a", timeout=WAIT).result == jobs_module.DEFAULT_THREADS
        shared = make_runner(max_concurrent=2)  # two jobs at once share the cores
        job = shared.submit("a", thread_count)
        assert shared.wait(job, "a", timeout=WAIT).result == max(1, jobs_module.DEFAULT_THREADS // 2)
        configured = make_runner(threads=1)
        job = configured.submit("a", thread_count)
        assert configured.wait(job, "a", timeout=WAIT).result == 1
    finally:
        torch.set_num_threads(before)


def test_the_apps_warm_up_waits_while_a_job_trains(make_runner, monkeypatch):
    """Loading the tabs' models beside a job that was started in the app's first seconds took CPU from the job,
    whose clock was running. The warm-up waits for training to finish, then loads every model, on one PyTorch
    thread: a waiting thread that owned an OpenMP team of two made OpenMP put the job's threads to sleep between
    operations (the job used 67 of 80 CPU-seconds)."""
    import torch

    import app
    import engine.registry

    runner = make_runner()
    loaded: list[str] = []

    class Recorder:
        def get(self, name: str) -> None:
            loaded.append((name, torch.get_num_threads()))

    monkeypatch.setattr(jobs_module, "default_runner", lambda: runner)
    monkeypatch.setattr(engine.registry, "default_registry", lambda: Recorder())
    gate, started = gate_for(make_runner), threading.Event()
    job_id = runner.submit("alice", blocker(gate, started))
    assert started.wait(WAIT) and runner.training()
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # a new thread starts with the count set last: the warm-up must choose its own
    warm = threading.Thread(target=app.warm_up, kwargs={"pause_s": 0.01})
    warm.start()
    torch.set_num_threads(before)
    time.sleep(0.3)
    assert loaded == []
    runner.pause(job_id, "alice")  # a paused job does not train: nothing to wait for
    warm.join(WAIT)
    assert loaded == [(name, 1) for name in app.WARM_MODELS] and not warm.is_alive()
